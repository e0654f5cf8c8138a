-- Tollgate: void a charge by id, exactly once, whether or not it was applied yet.
-- KEYS[1] balance, KEYS[2] charge record (the cost, or "=<credits>" once settled), KEYS[3] idem key (optional; a hash: charge, fp,
-- resp). ARGV[1] charge id, ARGV[2] charge ttl ms, ARGV[3] the cost if the caller saw the
-- charge applied (a refund), else "" (a void after a timeout: only the record can tell).
-- Returns {code, balance}: 0 refunded, 1 never applied (id now spent), 2 already voided,
-- 3 applied but the balance is gone (Redis lost it): nothing to give back to; hydration
-- seeds it from the store, which this refunded charge never reaches.
local record = redis.call('GET', KEYS[2])
if record == 'void' then
  return {2, 0}
end
-- A settled charge ("=<credits>") gives back what it took in the end.
local settled = record and string.match(record, '^=(%d+)$')
local cost = tonumber(settled) or tonumber(record) or tonumber(ARGV[3])
-- Whatever happens next, the id is spent: a late charge with it will take nothing.
redis.call('SET', KEYS[2], 'void', 'PX', ARGV[2])
-- A key this charge claimed is released: a retry is a new call.
if KEYS[3] and redis.call('HGET', KEYS[3], 'charge') == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
if not cost then
  return {1, 0}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {3, 0}
end
return {0, redis.call('INCRBY', KEYS[1], cost)}
