-- Tollgate: the scheduler's leader lock. Taken when free, renewed by its holder, expiring
-- on its own when the holder dies.
-- KEYS[1] tg:scheduler:leader, ARGV[1] owner id, ARGV[2] ttl ms. Returns 1 if ARGV[1] leads.
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
