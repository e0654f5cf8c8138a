-- Tollgate: void a charge by id, exactly once, whether or not it was applied yet.
-- KEYS[1] balance, KEYS[2] charge record, KEYS[3] idem key (optional)
-- ARGV[1] charge id, ARGV[2] charge ttl ms, ARGV[3] the cost if the caller saw the charge
-- applied (a refund), else "" (a void after a timeout: only the record can tell).
-- Returns {code, balance}: 0 refunded, 1 never applied (id now spent), 2 already voided.
local record = redis.call('GET', KEYS[2])
if record == 'void' then
  return {2, 0}
end
local cost = tonumber(record) or tonumber(ARGV[3])
-- Whatever happens next, the id is spent: a late charge with it will take nothing.
redis.call('SET', KEYS[2], 'void', 'PX', ARGV[2])
if not cost or redis.call('EXISTS', KEYS[1]) == 0 then
  return {1, 0}
end
local balance = redis.call('INCRBY', KEYS[1], cost)
if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return {0, balance}
