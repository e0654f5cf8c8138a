-- Tollgate: void a charge by id, exactly once, whether or not it was applied yet.
-- KEYS[1] balance, KEYS[2] charge record (the cost, or "=<credits>" once settled), KEYS[3] idem key (optional; a hash: charge, fp,
-- resp), last: the API key's budget counter the charge counted against (with ARGV[4] = "1").
-- ARGV[1] charge id, ARGV[2] charge ttl ms, ARGV[3] the cost if the caller saw the
-- charge applied (a refund), else "" (a void after a timeout: only the record can tell).
-- Returns {code, balance}: 0 refunded, 1 never applied (id now spent), 2 already voided,
-- 3 applied but the balance is gone (Redis lost it): nothing to give back to; hydration
-- seeds it from the store, which this refunded charge never reaches.
local budget_key, idem_key = nil, KEYS[3]
if ARGV[4] == '1' then
  budget_key = KEYS[#KEYS]
  if #KEYS < 4 then
    idem_key = nil
  end
end
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
if idem_key and redis.call('HGET', idem_key, 'charge') == ARGV[1] then
  redis.call('DEL', idem_key)
end
if not cost then
  return {1, 0}
end
if budget_key and redis.call('EXISTS', budget_key) == 1 then
  -- What goes back to the balance no longer counts against the key's budget.
  local spent = redis.call('DECRBY', budget_key, cost)
  if spent < 0 then
    redis.call('INCRBY', budget_key, -spent)
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {3, 0}
end
return {0, redis.call('INCRBY', KEYS[1], cost)}
