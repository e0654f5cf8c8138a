-- Tollgate: take a charge atomically. One round trip per metered request.
-- KEYS[1] balance   tg:{tenant}:bal
-- KEYS[2] charge    tg:{tenant}:ch:{charge_id}   (cost while live, "void" once voided)
-- KEYS[3] warnings  tg:{tenant}:warn             (hash: which warnings were announced)
-- KEYS[4] leases    tg:{tenant}:leases           (the replicas' slices: sweep.lua)
-- KEYS[5] idem key  tg:{tenant}:idk:{key}        (optional; hash: charge, fp, resp)
-- then, per limiter (ARGV[10] of them): tg:{tenant}:rl:{scope} (GCRA's theoretical arrival
--         time, ms) and tg:{tenant}:cc:{scope} (the calls in flight: a sorted set of charge
--         ids by when their place lapses)
-- last    budget    tg:{tenant}:kb:{counter}      (with ARGV[8]: an API key's spend this month)
-- ARGV[1] cost, ARGV[2] charge id, ARGV[3] charge ttl ms, ARGV[4] idempotency ttl ms,
-- ARGV[5] the tenant's low-credit threshold, ARGV[6] the request's fingerprint (with a key),
-- ARGV[7] credits the calling replica holds in its own leased slice (0 without leasing):
-- warnings are decided on its view, the balance plus that slice; ARGV[8] the API key's monthly
-- budget ("" without one), ARGV[9] the budget counter's life in ms, ARGV[10] the number of
-- limiters, ARGV[11] a call's place in flight lapses after (ms), then per limiter: requests
-- per second, burst ("" for no rate limit), most calls in flight ("" for none)
-- Returns {code, balance, warnings}: code 0 charged, 1 the idempotency key belongs to an earlier
-- request (nothing taken: the gateway reads the key's record), 2 insufficient, 3 no balance (hydrate and retry), 4 charge id voided, 5 charge id
-- already applied (a retry of a charge whose answer was lost: nothing taken twice), 6 not
-- enough here but replicas hold slices: they are recalled (ask again once they are back),
-- 7 the API key's budget would pass its limit (nothing taken; the third value is its spend),
-- 8 a limit refused the call: {8, balance, limiter (1-based), 1 if concurrency, retry after
-- ms}; nothing taken or counted. A charged call answers {0, balance, warnings, limiter,
-- remaining, reset ms} for the tightest rate limit it passed (limiter 0: none).
-- warnings: +1 the balance crossed the threshold (above -> at or below), +2 it is
-- exhausted (reached 0, or a charge was refused). Each is announced once, here where the
-- balance before and after is seen atomically, until a top-up re-arms it (adjust.lua), so
-- any number of replicas announce a crossing once.
local limiters = tonumber(ARGV[10]) or 0
local last = #KEYS
local budget_key, idem_key = nil, nil
if ARGV[8] and ARGV[8] ~= '' then
  budget_key = KEYS[last]
  last = last - 1
end
local first_limit = last - 2 * limiters + 1
if first_limit > 5 then
  idem_key = KEYS[5]
end
local balance = redis.call('GET', KEYS[1])
if not balance then
  return {3, 0, 0}
end
balance = tonumber(balance)
local record = redis.call('GET', KEYS[2])
if record == 'void' then
  return {4, balance, 0}
end
if record then
  return {5, balance, 0}
end
if idem_key and redis.call('EXISTS', idem_key) == 1 then
  return {1, balance, 0}
end
local cost = tonumber(ARGV[1])
-- The limits, all checked before any is counted: a call one limit refuses uses none.
local now = now_ms()
local tightest, tightest_remaining, tightest_reset = 0, nil, 0
local arrivals = {}
for i = 1, limiters do
  local rate_key, flight_key = KEYS[first_limit + 2 * i - 2], KEYS[first_limit + 2 * i - 1]
  local base = 11 + 3 * (i - 1)
  local rps, burst, most = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  if rps then
    local interval = 1000 / rps
    local tat = math.max(tonumber(redis.call('GET', rate_key) or '0'), now)
    local allowed = (burst - 1) * interval
    if tat - now > allowed then
      return {8, balance, i, 0, math.ceil(tat - now - allowed)}
    end
    local next_tat = tat + interval
    arrivals[i] = next_tat
    local remaining = math.floor((burst * interval - (next_tat - now)) / interval)
    if not tightest_remaining or remaining < tightest_remaining then
      tightest, tightest_remaining, tightest_reset = i, remaining, math.ceil(next_tat - now)
    end
  end
  if most then
    redis.call('ZREMRANGEBYSCORE', flight_key, '-inf', now)
    if redis.call('ZCARD', flight_key) >= most then
      -- When a place frees is when a call ends, which nothing here knows: a second.
      return {8, balance, i, 1, 1000}
    end
  end
end
if budget_key and cost > 0 then
  local spent = tonumber(redis.call('GET', budget_key) or '0')
  if spent + cost > tonumber(ARGV[8]) then
    return {7, balance, spent}
  end
end
if balance < cost and redis.call('EXISTS', KEYS[4]) == 1 then
  -- Credits may sit in slices: expired ones come back now, live ones are recalled, and
  -- the call is refused only once none is out (docs/DESIGN.md §Leased credits).
  if sweep(KEYS[1], KEYS[4], now_ms()) > 0 then
    redis.call('HSET', KEYS[4], '_recall', 1)
    return {6, balance, 0}
  end
  balance = tonumber(redis.call('GET', KEYS[1]))
end
if balance < cost then
  if redis.call('HSETNX', KEYS[3], 'exhausted', 1) == 1 then
    return {2, balance, 2}
  end
  return {2, balance, 0}
end
local after = redis.call('DECRBY', KEYS[1], cost)
redis.call('SET', KEYS[2], cost, 'PX', ARGV[3])
if budget_key then
  redis.call('INCRBY', budget_key, cost)
  redis.call('PEXPIRE', budget_key, ARGV[9])
end
for i = 1, limiters do
  local base = 11 + 3 * (i - 1)
  if arrivals[i] then
    local rate_key = KEYS[first_limit + 2 * i - 2]
    redis.call('SET', rate_key, arrivals[i], 'PX', math.ceil(arrivals[i] - now) + 1000)
  end
  if tonumber(ARGV[base + 3]) then
    local flight_key = KEYS[first_limit + 2 * i - 1]
    redis.call('ZADD', flight_key, now + tonumber(ARGV[11]), ARGV[2])
    redis.call('PEXPIRE', flight_key, ARGV[11])
  end
end
if idem_key then
  -- Claimed in flight by this charge; the response is kept here once the call completes.
  redis.call('HSET', idem_key, 'charge', ARGV[2], 'fp', ARGV[6])
  redis.call('PEXPIRE', idem_key, ARGV[4])
end
local warnings = 0
local threshold = tonumber(ARGV[5]) - (tonumber(ARGV[7]) or 0)
if balance > threshold and after <= threshold then
  warnings = warnings + redis.call('HSETNX', KEYS[3], 'low', 1)
end
if after + (tonumber(ARGV[7]) or 0) == 0 then
  warnings = warnings + 2 * redis.call('HSETNX', KEYS[3], 'exhausted', 1)
end
return {0, after, warnings, tightest, tightest_remaining or 0, tightest_reset}
