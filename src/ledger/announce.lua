-- Tollgate: announce a warning a replica saw its own view of the balance cross (a charge
-- taken from a leased slice), once across every replica, as charge.lua does for its own.
-- KEYS[1] warnings tg:{tenant}:warn, ARGV[1] 'low' or 'exhausted'. Returns 1 to announce.
return redis.call('HSETNX', KEYS[1], ARGV[1], 1)
