-- Tollgate: take a charge atomically. One round trip per metered request.
-- KEYS[1] balance   tg:{tenant}:bal
-- KEYS[2] charge    tg:{tenant}:ch:{charge_id}   (cost while live, "void" once voided)
-- KEYS[3] idem key  tg:{tenant}:idem:{key}       (optional)
-- ARGV[1] cost, ARGV[2] charge id, ARGV[3] charge ttl ms, ARGV[4] idempotency ttl ms
-- Returns {code, balance}: 0 charged, 1 replayed (idempotency key already paid),
-- 2 insufficient, 3 no balance (hydrate and retry), 4 charge id already used or voided.
local balance = redis.call('GET', KEYS[1])
if not balance then
  return {3, 0}
end
balance = tonumber(balance)
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {4, balance}
end
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  return {1, balance}
end
local cost = tonumber(ARGV[1])
if balance < cost then
  return {2, balance}
end
balance = redis.call('DECRBY', KEYS[1], cost)
redis.call('SET', KEYS[2], cost, 'PX', ARGV[3])
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[4])
end
return {0, balance}
