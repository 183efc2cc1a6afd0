-- denylist_test.lua — offline tests of denylist.lua: `sidekick lua-test lua/denylist_test.lua`

local CFG = {
    deny_ips = "192.0.2.7, 2001:db8::1,, 198.51.100.1 ",
    deny_paths = "/admin, /.git/",
    deny_agents = "sqlmap, Nikto",
}

local function check_denied(res, what)
    T.eq(res.action, "respond", what)
    T.eq(res.status, 403, what)
    T.eq(res.headers["content-type"], "text/plain", what)
    T.ok(res.body and res.body:find("forbidden", 1, true), what .. ": " .. tostring(res.body))
end

T.case("an ordinary request goes on", function()
    local f = T.filter("denylist.lua", CFG)
    local r = T.request{ path = "/api/x?next=/admin", client_ip = "10.0.0.1",
                         headers = { ["user-agent"] = "curl/8.0" } }
    T.eq(f:request(r).action, "continue")
    T.eq(r.path, "/api/x")
    T.eq(r.headers, { ["user-agent"] = "curl/8.0" })
end)

T.case("a listed client address is refused", function()
    local f = T.filter("denylist.lua", CFG)
    check_denied(f:request(T.request{ client_ip = "192.0.2.7" }), "192.0.2.7")
    check_denied(f:request(T.request{ client_ip = "198.51.100.1" }), "trimmed item")
    check_denied(f:request(T.request{ client_ip = "2001:db8::1" }), "IPv6")
end)

T.case("addresses match exactly, not by prefix", function()
    local f = T.filter("denylist.lua", CFG)
    for _, ip in ipairs{ "192.0.2.70", "192.0.2.", "10.192.0.2.7", "127.0.0.1" } do
        T.eq(f:request(T.request{ client_ip = ip }).action, "continue", ip)
    end
end)

T.case("a listed path prefix is refused", function()
    local f = T.filter("denylist.lua", CFG)
    for _, p in ipairs{ "/admin", "/admin/users", "/administrator", "/.git/config?x=1" } do
        check_denied(f:request(T.request{ path = p }), p)
    end
end)

T.case("other paths, and the query, do not match", function()
    local f = T.filter("denylist.lua", CFG)
    for _, p in ipairs{ "/", "/api/admin", "/Admin", "/.git", "/x?/admin" } do
        T.eq(f:request(T.request{ path = p }).action, "continue", p)
    end
end)

T.case("a listed user-agent substring is refused, in any case", function()
    local f = T.filter("denylist.lua", CFG)
    for _, ua in ipairs{ "sqlmap/1.7", "Mozilla/5.0 (SQLMap)", "nikto", "Mozilla/5.00 (Nikto/2.1.6)" } do
        check_denied(f:request(T.request{ headers = { ["user-agent"] = ua } }), ua)
    end
end)

T.case("agents match as plain text, not patterns", function()
    local f = T.filter("denylist.lua", { deny_agents = "bot.*x, a%d" })
    T.eq(f:request(T.request{ headers = { ["user-agent"] = "botanix" } }).action, "continue")
    check_denied(f:request(T.request{ headers = { ["user-agent"] = "my-bot.*x" } }), "literal")
    T.eq(f:request(T.request{ headers = { ["user-agent"] = "a1" } }).action, "continue")
end)

T.case("no user-agent is not refused by agent rules", function()
    local f = T.filter("denylist.lua", CFG)
    T.eq(f:request(T.request{}).action, "continue")
end)

T.case("an empty config lets everything through", function()
    local f = T.filter("denylist.lua", {})
    local r = T.request{ path = "/admin", client_ip = "192.0.2.7", headers = { ["user-agent"] = "sqlmap" } }
    T.eq(f:request(r).action, "continue")
end)

T.case("two routes with different lists do not share them", function()
    local a = T.filter("denylist.lua", { deny_paths = "/a" })
    local b = T.filter("denylist.lua", { deny_paths = "/b" })
    check_denied(a:request(T.request{ path = "/a" }), "route a, /a")
    T.eq(a:request(T.request{ path = "/b" }).action, "continue")
    check_denied(b:request(T.request{ path = "/b" }), "route b, /b")
    T.eq(b:request(T.request{ path = "/a" }).action, "continue")
end)

T.case("the response passes untouched", function()
    local f = T.filter("denylist.lua", CFG)
    local r = T.request{}
    f:request(r)
    T.eq(f:response(r, { status = 404, headers = { ["x-y"] = "z" } }).action, "continue")
    T.eq(r.response.status, 404)
    T.eq(r.response.headers, { ["x-y"] = "z" })
end)
