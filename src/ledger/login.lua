-- Tollgate: failed logins of one account, shared by every control-plane replica.
-- KEYS[1] tg:login:{account}   (hash: count, first, until — unix ms)
-- ARGV[1] op: check | fail | reset, ARGV[2] now ms, ARGV[3] failures allowed before a lock,
-- ARGV[4] counting window ms, ARGV[5] first lock ms, ARGV[6] longest lock ms.
-- Returns the ms the account stays locked (0: not locked). Each lock past the allowance
-- doubles, as the in-process throttle does; the state forgets itself after a quiet window.
if ARGV[1] == 'reset' then
  redis.call('DEL', KEYS[1])
  return 0
end
local now = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'count', 'first', 'until')
local count = tonumber(state[1]) or 0
local first = tonumber(state[2]) or now
local locked = tonumber(state[3])
if ARGV[1] == 'fail' then
  local free, window = tonumber(ARGV[3]), tonumber(ARGV[4])
  if now - first > window and not locked then
    count, first = 0, now
  end
  count = count + 1
  if count >= free then
    local lock = math.min(tonumber(ARGV[5]) * 2 ^ math.min(count - free, 10), tonumber(ARGV[6]))
    locked = now + lock
    redis.call('HSET', KEYS[1], 'until', string.format('%.0f', locked))
  end
  redis.call('HSET', KEYS[1], 'count', count, 'first', string.format('%.0f', first))
  redis.call('PEXPIRE', KEYS[1], window + tonumber(ARGV[6]))
end
if locked and locked > now then
  return math.floor(locked - now)
end
return 0
