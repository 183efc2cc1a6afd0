-- response_headers.lua — security headers and a server-timing entry on every response.
--
-- Adds, unless the upstream already set them:
--   strict-transport-security: max-age=31536000; includeSubDomains
--   x-content-type-options: nosniff
--   x-frame-options: DENY
--   referrer-policy: strict-origin-when-cross-origin
-- and always appends
--   server-timing: sidekick;dur=<ms>
-- the time from this filter's on_request to its on_response (upstream
-- connect, request and response head), in milliseconds. It is appended, so an
-- upstream's own server-timing entries stay.
--
-- Route config (all optional strings) replaces a value; "off" leaves that
-- header out:
--   lua.hsts = max-age=63072000; includeSubDomains; preload
--   lua.content_type_options = nosniff
--   lua.frame_options = SAMEORIGIN
--   lua.referrer_policy = no-referrer
--   lua.server_timing = off

local util = require("lib.util")

-- { response header, config key, default value }
local SECURITY = {
    { "strict-transport-security", "hsts", "max-age=31536000; includeSubDomains" },
    { "x-content-type-options", "content_type_options", "nosniff" },
    { "x-frame-options", "frame_options", "DENY" },
    { "referrer-policy", "referrer_policy", "strict-origin-when-cross-origin" },
}

-- cfg -> { headers = { {name, value}, ... }, timing = bool }
local settings = util.per_config(function(cfg)
    local headers = {}
    for _, h in ipairs(SECURITY) do
        local v = cfg[h[2]]
        v = v and util.trim(v) or h[3]
        if v ~= "off" and v ~= "" then headers[#headers + 1] = { h[1], v } end
    end
    return { headers = headers, timing = cfg.server_timing ~= "off" }
end)

local M = {}

function M.on_request(r)
    r:ctx().started = sk.now()
end

function M.on_response(r)
    local s = settings(r:config())
    for _, h in ipairs(s.headers) do
        if r:response_header(h[1]) == nil then
            r:set_response_header(h[1], h[2])
        end
    end
    local started = r:ctx().started
    if s.timing and started then
        local ms = (sk.now() - started) * 1000
        if ms < 0 then ms = 0 end -- the wall clock stepped back
        r:add_response_header("server-timing", string.format("sidekick;dur=%.3f", ms))
    end
end

return M
