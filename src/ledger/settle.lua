-- Tollgate: settle a reserved charge at what the call cost, exactly once.
-- KEYS[1] balance   tg:{tenant}:bal
-- KEYS[2] charge    tg:{tenant}:ch:{charge_id}   (the reserve while live, "=<credits>" once
--                                               settled, "void" once voided)
-- KEYS[3] warnings  tg:{tenant}:warn
-- KEYS[4] budget    tg:{tenant}:kb:{counter}      (optional: the API key's spend this month)
-- ARGV[1] the reserve the charge took (a charge from a leased slice leaves no record),
-- ARGV[2] what the call cost (above the reserve only under `overage: allow`), ARGV[3] charge
-- ttl ms, ARGV[4] the tenant's low-credit threshold, ARGV[5] credits the calling replica
-- holds in its own leased slice (warnings are decided on its view, as in charge.lua).
-- Returns {code, balance, charged, warnings}: code 0 settled (now, or by an earlier try:
-- charged is what that took), 1 the charge was voided (nothing to settle), 2 no balance
-- (Redis lost it: nothing moved; the store, which gets the call's log, seeds it again).
local record = redis.call('GET', KEYS[2])
if record == 'void' then
  return {1, 0, 0, 0}
end
local balance = redis.call('GET', KEYS[1])
if record and string.sub(record, 1, 1) == '=' then
  return {0, tonumber(balance) or 0, tonumber(string.sub(record, 2)), 0}
end
if not balance then
  return {2, 0, 0, 0}
end
balance = tonumber(balance)
local reserved = tonumber(record) or tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local charged = cost
local after = balance
if cost < reserved then
  after = redis.call('INCRBY', KEYS[1], reserved - cost)
elseif cost > reserved then
  -- Beyond the reserve only as far as the balance goes: never negative.
  local extra = math.min(cost - reserved, balance)
  charged = reserved + extra
  if extra > 0 then
    after = redis.call('DECRBY', KEYS[1], extra)
  end
end
redis.call('SET', KEYS[2], '=' .. charged, 'PX', ARGV[3])
if KEYS[4] and charged ~= reserved and redis.call('EXISTS', KEYS[4]) == 1 then
  -- The key's spend moves with the balance: less back, extra on (past its limit, if a
  -- settled cost went beyond the reserve).
  local spent = redis.call('INCRBY', KEYS[4], charged - reserved)
  if spent < 0 then
    redis.call('INCRBY', KEYS[4], -spent)
  end
end
local warnings = 0
if after < balance then
  local own = tonumber(ARGV[5]) or 0
  local threshold = tonumber(ARGV[4]) - own
  if balance > threshold and after <= threshold then
    warnings = warnings + redis.call('HSETNX', KEYS[3], 'low', 1)
  end
  if after + own == 0 then
    warnings = warnings + 2 * redis.call('HSETNX', KEYS[3], 'exhausted', 1)
  end
end
return {0, after, charged, warnings}
