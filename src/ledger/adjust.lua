-- Tollgate: move a balance by an operator's decision (top-up, correction, set), atomically
-- with respect to concurrent charges, once per operation id.
-- KEYS[1] balance    tg:{tenant}:bal
-- KEYS[2] operation  tg:{tenant}:adj:{op_id}   (the amount applied, while it lives)
-- KEYS[3] warnings   tg:{tenant}:warn           (see charge.lua)
-- KEYS[4] leases     tg:{tenant}:leases         (the replicas' slices: sweep.lua)
-- ARGV[1] 'add' or 'set', ARGV[2] amount (add) or new balance (set), ARGV[3] highest
-- balance allowed, ARGV[4] operation ttl ms, ARGV[5] the low-credit threshold
-- Returns {code, amount, balance}: 0 applied, 1 applied before (replay), 2 no balance
-- (hydrate and retry), 3 refused: the balance would leave 0..=max, 4 not yet: a balance is
-- set only with every slice back (they are recalled; ask again).
-- Any change recalls the slices out, so every replica's view of the balance starts again
-- from the new one (docs/DESIGN.md §Leased credits).
-- Values go to Redis as the caller's strings: Lua prints numbers above 1e14 as 1e+15.
local done = redis.call('GET', KEYS[2])
local balance = redis.call('GET', KEYS[1])
if done then
  return {1, tonumber(done), tonumber(balance or 0)}
end
if not balance then
  return {2, 0, 0}
end
balance = tonumber(balance)
if redis.call('EXISTS', KEYS[4]) == 1 and sweep(KEYS[1], KEYS[4], now_ms()) > 0 then
  redis.call('HSET', KEYS[4], '_recall', 1)
  if ARGV[1] == 'set' then
    return {4, 0, balance}
  end
end
balance = tonumber(redis.call('GET', KEYS[1]))
local value = tonumber(ARGV[2])
local after = value
local amount = value
if ARGV[1] == 'set' then
  amount = value - balance
else
  after = balance + value
end
if after < 0 or after > tonumber(ARGV[3]) then
  return {3, amount, balance}
end
if ARGV[1] == 'set' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('INCRBY', KEYS[1], ARGV[2])
end
redis.call('SET', KEYS[2], string.format('%d', amount), 'PX', ARGV[4])
-- Re-arm the warnings the new balance is clear of.
if after > tonumber(ARGV[5]) then
  redis.call('DEL', KEYS[3])
elseif after > 0 then
  redis.call('HDEL', KEYS[3], 'exhausted')
end
return {0, amount, after}
