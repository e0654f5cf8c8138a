-- Tollgate: void a charge by id, exactly once, whether or not it was applied yet.
-- KEYS[1] balance, KEYS[2] charge record, KEYS[3] idem key (optional)
-- ARGV[1] charge id, ARGV[2] charge ttl ms
-- Returns {code, balance}: 0 refunded, 1 never applied (id now spent), 2 already voided.
local record = redis.call('GET', KEYS[2])
if not record or redis.call('EXISTS', KEYS[1]) == 0 then
  -- A late charge with this id will find the tombstone and take nothing.
  redis.call('SET', KEYS[2], 'void', 'PX', ARGV[2])
  return {1, 0}
end
if record == 'void' then
  return {2, 0}
end
redis.call('SET', KEYS[2], 'void', 'KEEPTTL')
local balance = redis.call('INCRBY', KEYS[1], tonumber(record))
if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return {0, balance}
