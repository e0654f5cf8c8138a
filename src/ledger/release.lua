-- Tollgate: a call's places in flight given back as it ends (docs/DESIGN.md §Limits).
-- KEYS: tg:{tenant}:cc:{scope} of each limit with a most calls in flight; ARGV[1] the call's
-- charge id. A place not given back (its gateway died) lapses by its score (charge.lua).
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 0
