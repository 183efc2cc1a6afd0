-- rewrite_test.lua — offline tests of rewrite.lua: `sidekick lua-test lua/rewrite_test.lua`

local V1 = { from = "^/v1/(.*)", to = "/api/%1" }

T.case("a matching path is rewritten and the query kept", function()
    local f = T.filter("rewrite.lua", V1)
    local r = T.request{ path = "/v1/users/7?fields=a,b&x=%2F" }
    T.eq(f:request(r).action, "continue")
    T.eq(r.path, "/api/users/7")
    T.eq(r.query, "fields=a,b&x=%2F")
end)

T.case("a path without a query stays without one", function()
    local f = T.filter("rewrite.lua", V1)
    local r = T.request{ path = "/v1/users" }
    f:request(r)
    T.eq(r.path, "/api/users")
    T.eq(r.query, nil)
end)

T.case("a path that does not match goes on unchanged", function()
    local f = T.filter("rewrite.lua", V1)
    for _, p in ipairs{ "/v2/users", "/x/v1/users", "/v1" } do
        local r = T.request{ path = p .. "?q=1" }
        T.eq(f:request(r).action, "continue")
        T.eq(r.path, p)
        T.eq(r.query, "q=1")
    end
end)

T.case("only the first match is replaced", function()
    local f = T.filter("rewrite.lua", { from = "/old", to = "/new" })
    local r = T.request{ path = "/old/old" }
    f:request(r)
    T.eq(r.path, "/new/old")
end)

T.case("several captures, %0 and %%", function()
    local f = T.filter("rewrite.lua", { from = "^/u/(%w+)/(%d+)$", to = "/users/%2/%1/%%41" })
    local r = T.request{ path = "/u/bob/42" }
    f:request(r)
    T.eq(r.path, "/users/42/bob/%41")
    local g = T.filter("rewrite.lua", { from = "^/legacy.*", to = "/archive%0" })
    local r2 = T.request{ path = "/legacy/a" }
    g:request(r2)
    T.eq(r2.path, "/archive/legacy/a")
end)

T.case("stripping the whole path leaves /", function()
    local f = T.filter("rewrite.lua", { from = "^/v1", to = "" })
    local r = T.request{ path = "/v1?x=1" }
    f:request(r)
    T.eq(r.path, "/")
    T.eq(r.query, "x=1")
end)

T.case("headers and method are untouched", function()
    local f = T.filter("rewrite.lua", V1)
    local r = T.request{ method = "POST", path = "/v1/a", headers = { ["x-a"] = "1" } }
    f:request(r)
    T.eq(r.headers, { ["x-a"] = "1" })
end)

T.case("a replacement that is not a path is an error", function()
    for _, to in ipairs{ "api/%1", "/api?x=%1", "/a#%1" } do
        local f = T.filter("rewrite.lua", { from = "^/v1/(.*)", to = to })
        local res = f:request(T.request{ path = "/v1/a" })
        T.eq(res.action, "error", "to = " .. to)
        T.ok(res.error:find("rewrite.lua", 1, true), res.error)
    end
end)

T.case("missing lua.from or lua.to is an error", function()
    for _, cfg in ipairs{ {}, { from = "^/v1" }, { to = "/x" } } do
        local res = T.filter("rewrite.lua", cfg):request(T.request{ path = "/v1/a" })
        T.eq(res.action, "error")
    end
end)

T.case("an invalid pattern or capture index is an error, not a crash", function()
    local bad = T.filter("rewrite.lua", { from = "^/v1/[a", to = "/x" })
    T.eq(bad:request(T.request{ path = "/v1/a" }).action, "error")
    local cap = T.filter("rewrite.lua", { from = "^/v1/(.*)", to = "/x/%2" })
    T.eq(cap:request(T.request{ path = "/v1/a" }).action, "error")
end)
