-- canary.lua — send part of a route's traffic to a canary cluster.
--
-- Route config (all strings):
--   lua.cluster       = api-canary  ; the canary [cluster] (required)
--   lua.header        = x-canary    ; optional: a request with this header is routed by it:
--   lua.header_value  = 1           ;   value == header_value (default "1") -> canary,
--                                   ;   any other value -> the route's own cluster
--   lua.percent       = 5           ; share of the other requests sent to the canary,
--                                   ; 0..100, fractions allowed (default 0)
--   lua.sticky_header = x-user-id   ; optional: place requests carrying this header by a
--                                   ; hash of its value, so one user stays on one side;
--                                   ; requests without it are placed at random
--
-- The decision is shared with C plugins as meta "canary" = "1" | "0" and sent
-- back to the client as the response header `x-canary: 1 | 0`.

local util = require("lib.util")

local settings = util.per_config(function(cfg)
    local cluster = cfg.cluster and util.trim(cfg.cluster) or ""
    if cluster == "" then error("canary.lua: lua.cluster is not set", 0) end
    local percent = 0
    if cfg.percent ~= nil then
        percent = util.tonumber_in(cfg.percent, 0, 100)
        if percent == nil then
            error("canary.lua: lua.percent must be a number in 0..100, not '" .. cfg.percent .. "'", 0)
        end
    end
    local function name(v)
        if v == nil then return nil end
        v = util.trim(v)
        return v ~= "" and v:lower() or nil
    end
    return {
        cluster = cluster,
        header = name(cfg.header),
        header_value = cfg.header_value and util.trim(cfg.header_value) or "1",
        percent = percent,
        sticky_header = name(cfg.sticky_header),
    }
end)

-- in_canary(r, s) -> true when this request goes to the canary cluster.
local function in_canary(r, s)
    if s.header then
        local v = r:header(s.header)
        if v ~= nil then return v == s.header_value end
    end
    if s.percent <= 0 then return false end
    if s.percent >= 100 then return true end
    local sticky = s.sticky_header and r:header(s.sticky_header)
    if sticky then
        -- 10000 buckets: percent has a resolution of 0.01
        return (util.fnv1a32(sticky) % 10000) < s.percent * 100
    end
    return math.random() * 100 < s.percent
end

local M = {}

function M.on_request(r)
    local s = settings(r:config())
    local flag = "0"
    if in_canary(r, s) then
        r:set_cluster(s.cluster)
        flag = "1"
    end
    r:set_meta("canary", flag)
    r:ctx().canary = flag
end

function M.on_response(r)
    local flag = r:ctx().canary
    if flag then r:set_response_header("x-canary", flag) end
end

return M
