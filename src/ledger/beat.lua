-- Tollgate: a usage pipeline's heartbeat in the registry of pipelines, after it published
-- its pending credits (tg:{tenant}:pending hashes) for this tick.
-- KEYS[1] tg:pipelines (hash: pipeline id -> last publish, Redis ms; `_since` -> when the
-- registry was (re)created), ARGV[1] pipeline id.
-- Returns {known, now_ms, since_ms}: known 0 when the registry had lost this pipeline (a
-- flush): the caller publishes everything it holds next.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local known = redis.call('HEXISTS', KEYS[1], ARGV[1])
redis.call('HSETNX', KEYS[1], '_since', now)
redis.call('HSET', KEYS[1], ARGV[1], now)
return {known, now, tonumber(redis.call('HGET', KEYS[1], '_since'))}
