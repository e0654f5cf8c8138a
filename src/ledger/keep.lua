-- Tollgate: keep a completed call's response with the idempotency key it claimed.
-- KEYS[1] idem key tg:{tenant}:idk:{key} (hash: charge, fp, resp)
-- ARGV[1] the charge id that claimed it, ARGV[2] the encoded response
-- Returns 1 kept, 0 the key no longer belongs to this charge (released, or expired).
if redis.call('HGET', KEYS[1], 'charge') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'resp', ARGV[2])
return 1
