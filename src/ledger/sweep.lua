-- Tollgate: the leases' bookkeeping shared by the scripts that see a tenant's slices
-- (prepended to lease.lua, charge.lua and adjust.lua). docs/DESIGN.md §Leased credits.
-- A tenant's leases hash (tg:{tenant}:leases) maps each holder to
-- "held:margin:expires_ms:report": held, the credits of its slice it has not yet reported
-- spent; margin, the most it may spend beyond its last report; expires_ms, Redis time;
-- report, the number of the last report applied (a retried report is applied once). `_recall` (1) asks every holder
-- to return its slice; `_forfeited` counts the credits kept from expired leases.

local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

local function parse_lease(value)
  local held, margin, expires, report = string.match(value or '', '^(%-?%d+):(%d+):(%d+):?(%d*)$')
  return tonumber(held), tonumber(margin), tonumber(expires), tonumber(report) or 0
end

-- Ends the leases past their expiry: the part of a slice its holder cannot have spent
-- (held beyond the margin) goes back to the balance; the margin is kept (forfeited), since
-- the holder may have spent it without reporting. Returns how many leases stay.
local function sweep(balance_key, leases_key, now)
  local fields = redis.call('HGETALL', leases_key)
  local live = 0
  for i = 1, #fields, 2 do
    local holder = fields[i]
    if string.sub(holder, 1, 1) ~= '_' then
      local held, margin, expires = parse_lease(fields[i + 1])
      if not expires or expires <= now then
        held, margin = math.max(held or 0, 0), margin or 0
        local kept = math.min(margin, held)
        if held - kept > 0 and redis.call('EXISTS', balance_key) == 1 then
          redis.call('INCRBY', balance_key, held - kept)
        end
        if kept > 0 then
          redis.call('HINCRBY', leases_key, '_forfeited', kept)
        end
        redis.call('HDEL', leases_key, holder)
      else
        live = live + 1
      end
    end
  end
  return live
end

