-- rewrite.lua — rewrite the path sent upstream with a Lua pattern.
--
-- Route config (all strings):
--   lua.from = ^/v1/(.*)   ; a Lua pattern (not a regex), matched against the path
--                          ; without the query
--   lua.to   = /api/%1     ; the replacement, as in string.gsub: %1..%9 are the captures,
--                          ; %0 the whole match, %% a literal '%'
--
-- Only the first match is replaced. A path that does not match goes upstream
-- unchanged. The query string is never touched: /v1/users?id=3 becomes
-- /api/users?id=3. A rewrite that yields an empty path sends "/"; one that
-- yields a path not starting with '/', or containing '?' or '#', is a
-- configuration mistake and fails the request (500 filter_error, logged).

local M = {}

function M.on_request(r)
    local cfg = r:config()
    local from, to = cfg.from, cfg.to
    if from == nil or to == nil then
        error("rewrite.lua: lua.from and lua.to must both be set", 0)
    end
    local path, n = string.gsub(r:path(), from, to, 1)
    if n == 0 then return end
    if path == "" then path = "/" end
    if path:sub(1, 1) ~= "/" or path:find("[?#]") then
        error("rewrite.lua: '" .. r:path() .. "' rewritten to '" .. path
            .. "', which is not a path (check lua.to)", 0)
    end
    r:set_path(path)
end

return M
