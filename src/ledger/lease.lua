-- Tollgate: a replica reports what it spent of its slice of a tenant's balance, and grows,
-- keeps or returns the slice, in one atomic step. docs/DESIGN.md §Leased credits.
-- KEYS[1] balance tg:{tenant}:bal, KEYS[2] leases tg:{tenant}:leases (see sweep.lua)
-- ARGV[1] holder, ARGV[2] credits spent since the last report, ARGV[3] credits wanted on
-- top of what it holds (0: none), ARGV[4] the least grant worth having, ARGV[5] margin,
-- ARGV[6] lease ttl ms, ARGV[7] 'sync' or 'return', ARGV[8] the report's number (one more
-- than the last the holder saw applied; a report whose answer was lost is sent again with
-- the same number and the same spent, and its spent is taken once)
-- Returns {code, balance, held, recall}: 0 the lease stands (held after the grant), 1 the
-- slice was returned, 2 no lease (none was granted, or it expired): the holder drops its
-- slice, 3 no balance (Redis lost it): the holder drops its slice. recall 1: return it.
local now = now_ms()
local balance = redis.call('GET', KEYS[1])
if not balance then
  return {3, 0, 0, 0}
end
local others = sweep(KEYS[1], KEYS[2], now)
balance = tonumber(redis.call('GET', KEYS[1]))
local mine = redis.call('HGET', KEYS[2], ARGV[1])
local recall = redis.call('HEXISTS', KEYS[2], '_recall')
local held = 0
local report = tonumber(ARGV[8])
if mine then
  others = others - 1
  local was, _, _, last = parse_lease(mine)
  held = was
  if report > last then
    held = was - tonumber(ARGV[2])
  end
end
if ARGV[7] == 'return' or recall == 1 then
  if mine then
    if held > 0 then
      balance = redis.call('INCRBY', KEYS[1], held)
    end
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
  -- The last slice back ends a recall.
  if recall == 1 and others == 0 then
    redis.call('HDEL', KEYS[2], '_recall')
  end
  return {mine and 1 or 2, balance, 0, recall}
end
-- A grant leaves at least three quarters of the balance to everyone else, so near zero
-- there is none, and calls are charged one by one.
local grant = math.min(tonumber(ARGV[3]), math.floor(balance / 4))
if grant < tonumber(ARGV[4]) then
  grant = 0
end
if not mine and grant == 0 then
  return {2, balance, 0, 0}
end
if grant > 0 then
  balance = redis.call('DECRBY', KEYS[1], grant)
  held = held + grant
end
redis.call('HSET', KEYS[2], ARGV[1],
  string.format('%d:%d:%d:%d', held, tonumber(ARGV[5]), now + tonumber(ARGV[6]), report))
return {0, balance, held, 0}
