-- canary_test.lua — offline tests of canary.lua: `sidekick lua-test lua/canary_test.lua`

local CLUSTERS = { "api", "api-canary" }

local function req(headers)
    return T.request{ path = "/api/x", headers = headers or {}, clusters = CLUSTERS }
end

-- run(f, r) -> r after on_request and on_response of an upstream 200
local function run(f, r)
    local res = f:request(r)
    T.eq(res.action, "continue", res.error)
    T.eq(f:response(r, { status = 200, headers = { ["content-type"] = "text/plain" } }).action, "continue")
    return r
end

T.case("the canary header sends a request to the canary cluster", function()
    local f = T.filter("canary.lua", { cluster = "api-canary", header = "x-canary" })
    local r = run(f, req{ ["x-canary"] = "1" })
    T.eq(r.cluster, "api-canary")
    T.eq(r.meta.canary, "1")
    T.eq(r.response.headers["x-canary"], "1")
    T.eq(r.response.headers["content-type"], "text/plain", "upstream headers kept")
end)

T.case("without the header (and percent 0) the route's cluster is kept", function()
    local f = T.filter("canary.lua", { cluster = "api-canary", header = "x-canary" })
    local r = run(f, req())
    T.eq(r.cluster, nil)
    T.eq(r.meta.canary, "0")
    T.eq(r.response.headers["x-canary"], "0")
end)

T.case("another header value opts out, even at percent 100", function()
    local f = T.filter("canary.lua", { cluster = "api-canary", header = "X-Canary", percent = "100" })
    local r = run(f, req{ ["x-canary"] = "0" })
    T.eq(r.cluster, nil)
    T.eq(r.meta.canary, "0")
    local r2 = run(f, req{ ["X-CANARY"] = "1" })
    T.eq(r2.cluster, "api-canary", "the header name is matched in any case")
end)

T.case("lua.header_value sets the value that opts in", function()
    local f = T.filter("canary.lua", { cluster = "api-canary", header = "x-track", header_value = "beta" })
    T.eq(run(f, req{ ["x-track"] = "beta" }).cluster, "api-canary")
    T.eq(run(f, req{ ["x-track"] = "1" }).cluster, nil)
end)

T.case("percent 100 sends everything, percent 0 nothing", function()
    local all = T.filter("canary.lua", { cluster = "api-canary", percent = "100" })
    local none = T.filter("canary.lua", { cluster = "api-canary", percent = "0" })
    for i = 1, 50 do
        local a = run(all, req{ ["x-user"] = "u" .. i })
        T.eq(a.cluster, "api-canary")
        T.eq(a.meta.canary, "1")
        local b = run(none, req{ ["x-user"] = "u" .. i })
        T.eq(b.cluster, nil)
        T.eq(b.meta.canary, "0")
    end
end)

T.case("a random percentage sends roughly that share", function()
    local f = T.filter("canary.lua", { cluster = "api-canary", percent = "25" })
    local n = 0
    for _ = 1, 2000 do
        if run(f, req()).cluster == "api-canary" then n = n + 1 end
    end
    T.ok(n > 350 and n < 650, "25% of 2000 went to the canary: " .. n)
end)

T.case("sticky: the same header value always lands on the same side", function()
    local f = T.filter("canary.lua", { cluster = "api-canary", percent = "30", sticky_header = "x-user" })
    local n = 0
    for i = 1, 1000 do
        local first = run(f, req{ ["x-user"] = "user-" .. i }).cluster
        for _ = 1, 3 do
            T.eq(run(f, req{ ["x-user"] = "user-" .. i }).cluster, first, "user-" .. i)
        end
        -- and in another instance of the filter (another worker)
        local g = T.filter("canary.lua", { cluster = "api-canary", percent = "30", sticky_header = "x-user" })
        T.eq(run(g, req{ ["x-user"] = "user-" .. i }).cluster, first, "user-" .. i .. " in another worker")
        if first then n = n + 1 end
    end
    T.ok(n > 230 and n < 370, "30% of 1000 users on the canary: " .. n)
end)

T.case("sticky: raising the percentage only moves users onto the canary", function()
    local lo = T.filter("canary.lua", { cluster = "api-canary", percent = "10", sticky_header = "x-user" })
    local hi = T.filter("canary.lua", { cluster = "api-canary", percent = "50", sticky_header = "x-user" })
    for i = 1, 500 do
        local u = { ["x-user"] = "u" .. i }
        if run(lo, req(u)).cluster then
            T.eq(run(hi, req(u)).cluster, "api-canary", "u" .. i .. " left the canary at 50%")
        end
    end
end)

T.case("the canary header wins over the sticky hash", function()
    local f = T.filter("canary.lua", { cluster = "api-canary", header = "x-canary", percent = "0",
                                       sticky_header = "x-user" })
    T.eq(run(f, req{ ["x-canary"] = "1", ["x-user"] = "a" }).cluster, "api-canary")
end)

T.case("the response header reflects the decision of that request", function()
    local f = T.filter("canary.lua", { cluster = "api-canary", header = "x-canary" })
    local a, b = req{ ["x-canary"] = "1" }, req()
    f:request(a)
    f:request(b)
    f:response(b, { status = 503 })
    f:response(a, { status = 200 })
    T.eq(a.response.headers["x-canary"], "1")
    T.eq(b.response.headers["x-canary"], "0")
    T.eq(b.response.status, 503)
end)

T.case("a canary cluster that is not in the config is an error", function()
    local f = T.filter("canary.lua", { cluster = "nope", percent = "100" })
    local res = f:request(req())
    T.eq(res.action, "error")
end)

T.case("missing lua.cluster and a bad lua.percent are errors", function()
    for _, cfg in ipairs{ { percent = "10" }, { cluster = "api-canary", percent = "abc" },
                          { cluster = "api-canary", percent = "101" },
                          { cluster = "api-canary", percent = "-1" } } do
        local res = T.filter("canary.lua", cfg):request(req())
        T.eq(res.action, "error")
        T.ok(res.error:find("canary.lua", 1, true), res.error)
    end
end)
