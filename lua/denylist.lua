-- denylist.lua — refuse requests by client IP, path prefix or user-agent.
--
-- Route config (all optional strings, comma-separated lists):
--   lua.deny_ips    = 192.0.2.7, 2001:db8::1   ; exact client addresses (no CIDR)
--   lua.deny_paths  = /admin, /.git/           ; path prefixes, case-sensitive, matched
--                                              ; against the path as the client sent it
--                                              ; (no percent-decoding, no dot-segment
--                                              ; removal: keep such paths out by routing)
--   lua.deny_agents = sqlmap, nikto            ; substrings of user-agent, plain text,
--                                              ; case-insensitive
--
-- A matching request gets 403 "forbidden" from here; the upstream sees
-- nothing. The lists are parsed once per route and worker, on first use.

local util = require("lib.util")

local settings = util.per_config(function(cfg)
    local agents = {}
    for i, a in ipairs(util.split_list(cfg.deny_agents)) do agents[i] = a:lower() end
    return {
        ips = util.set_of(util.split_list(cfg.deny_ips)),
        paths = util.split_list(cfg.deny_paths),
        agents = agents,
    }
end)

-- denied(r, s) -> the rule kind that matched ("ip", "path", "agent") or nil.
local function denied(r, s)
    if s.ips[r:client_ip()] then return "ip" end
    if #s.paths > 0 then
        local path = r:path()
        for _, p in ipairs(s.paths) do
            if util.starts_with(path, p) then return "path" end
        end
    end
    if #s.agents > 0 then
        local ua = r:header("user-agent")
        if ua then
            ua = ua:lower()
            for _, a in ipairs(s.agents) do
                if ua:find(a, 1, true) then return "agent" end
            end
        end
    end
    return nil
end

local M = {}

function M.on_request(r)
    local why = denied(r, settings(r:config()))
    if why then
        sk.log("debug", "denylist.lua: route", r:route(), "denied by", why, "client", r:client_ip())
        r:respond(403, "forbidden\n", { ["content-type"] = "text/plain" })
    end
end

return M
