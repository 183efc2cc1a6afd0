-- auth.lua — API-key authentication with a local 401 reply.
--
-- Route config (all strings):
--   lua.header = x-api-key        ; the request header holding the key (default x-api-key)
--   lua.keys   = ops:s3cr3t, ci:0ther, l3gacy
--                                  ; the accepted keys, comma-separated. An item is either
--                                  ; ID:KEY (the ID is what the upstream is told) or a bare
--                                  ; KEY (the ID is then "key-" .. the FNV-1a hash of the key
--                                  ; in hex, stable and not the key itself). Keys must not
--                                  ; contain ',' ; a bare key must not contain ':'.
--
-- A request whose header carries one of the keys goes on with the key header
-- removed and `x-authenticated-key-id: ID` set (any client-sent value of that
-- header is replaced, so it cannot be forged). Any other request is answered
-- here with 401, and the upstream sees nothing. A route without lua.keys
-- fails closed: every request gets the 500 filter_error reply and the log says
-- why.

local util = require("lib.util")

local ID_HEADER = "x-authenticated-key-id"

-- cfg -> { header = lower-case name, ids = { [key] = id }, challenge = string }
local settings = util.per_config(function(cfg)
    local header = (cfg.header and util.trim(cfg.header) ~= "") and util.trim(cfg.header):lower()
        or "x-api-key"
    local ids, n = {}, 0
    for _, item in ipairs(util.split_list(cfg.keys)) do
        local id, key = item:match("^([^:]*):(.*)$")
        if id then
            id, key = util.trim(id), util.trim(key)
            if id == "" or key == "" then
                error("auth.lua: lua.keys: empty id or key in '" .. item .. "'", 0)
            end
        else
            key = item
            id = "key-" .. util.hex32(util.fnv1a32(key))
        end
        ids[key] = id
        n = n + 1
    end
    if n == 0 then error("auth.lua: lua.keys is empty or not set", 0) end
    return {
        header = header,
        ids = ids,
        -- not a registered auth scheme: tells a client which header to send
        challenge = 'ApiKey header="' .. header .. '"',
    }
end)

local function refuse(r, s, why)
    sk.log("debug", "auth.lua: route", r:route(), "refused:", why, "client", r:client_ip())
    r:respond(401, why .. "\n", {
        ["content-type"] = "text/plain",
        ["www-authenticate"] = s.challenge,
        ["cache-control"] = "no-store",
    })
end

local M = {}

function M.on_request(r)
    local s = settings(r:config())
    local key = r:header(s.header)
    if key == nil or key == "" then
        return refuse(r, s, "missing API key")
    end
    local id = s.ids[key]
    if id == nil then
        return refuse(r, s, "invalid API key")
    end
    r:remove_header(s.header)
    r:set_header(ID_HEADER, id)
end

return M
