-- response_headers_test.lua — offline tests of response_headers.lua:
-- `sidekick lua-test lua/response_headers_test.lua`

local SECURITY = {
    ["strict-transport-security"] = "max-age=31536000; includeSubDomains",
    ["x-content-type-options"] = "nosniff",
    ["x-frame-options"] = "DENY",
    ["referrer-policy"] = "strict-origin-when-cross-origin",
}

-- values(v) -> the values of a header as an array (nil, one string or an array)
local function values(v)
    if v == nil then return {} end
    if type(v) == "table" then return v end
    return { v }
end

-- timing(headers) -> the sidekick server-timing duration in ms, or nil
local function timing(headers)
    for _, v in ipairs(values(headers["server-timing"])) do
        local ms = v:match("sidekick;dur=(%d+%.%d+)")
        if ms then return tonumber(ms) end
    end
    return nil
end

local function run(f, upstream)
    local r = T.request{ path = "/" }
    T.eq(f:request(r).action, "continue")
    T.eq(f:response(r, upstream).action, "continue")
    return r
end

T.case("the security headers and server-timing are added", function()
    local f = T.filter("response_headers.lua", {})
    local r = run(f, { status = 200, headers = { ["content-type"] = "text/html" } })
    for name, value in pairs(SECURITY) do
        T.eq(r.response.headers[name], value, name)
    end
    T.eq(r.response.headers["content-type"], "text/html")
    T.eq(r.response.status, 200)
    local ms = timing(r.response.headers)
    T.ok(ms and ms >= 0 and ms < 1000, "server-timing: " .. tostring(r.response.headers["server-timing"]))
    T.ok(r.response.headers["server-timing"]:match("^sidekick;dur=%d+%.%d%d%d$"),
        r.response.headers["server-timing"])
end)

T.case("the request headers are untouched", function()
    local f = T.filter("response_headers.lua", {})
    local r = T.request{ headers = { ["x-a"] = "1" } }
    f:request(r)
    T.eq(r.headers, { ["x-a"] = "1" })
end)

T.case("headers the upstream set win", function()
    local f = T.filter("response_headers.lua", {})
    local r = run(f, { status = 200, headers = { ["X-Frame-Options"] = "SAMEORIGIN",
                                                 ["referrer-policy"] = "no-referrer" } })
    T.eq(r.response.headers["x-frame-options"], "SAMEORIGIN")
    T.eq(r.response.headers["referrer-policy"], "no-referrer")
    T.eq(r.response.headers["x-content-type-options"], "nosniff")
end)

T.case("the upstream's server-timing stays and ours is appended", function()
    local f = T.filter("response_headers.lua", {})
    local r = run(f, { status = 200, headers = { ["server-timing"] = "db;dur=5.5" } })
    local v = values(r.response.headers["server-timing"])
    -- either two header lines or one joined value, depending on how they are shown
    local all = table.concat(v, ", ")
    T.ok(all:find("db;dur=5.5", 1, true), all)
    T.ok(timing(r.response.headers) or all:match("sidekick;dur=%d"), all)
end)

T.case("server-timing measures from on_request to on_response", function()
    local f = T.filter("response_headers.lua", {})
    local r = T.request{}
    f:request(r)
    local t0 = sk.now()
    while sk.now() - t0 < 0.02 do end -- the "upstream" takes 20 ms
    f:response(r, { status = 200 })
    local ms = timing(r.response.headers)
    T.ok(ms and ms >= 19 and ms < 1000, "dur " .. tostring(ms))
end)

T.case("error responses get the headers too", function()
    local f = T.filter("response_headers.lua", {})
    local r = run(f, { status = 502 })
    T.eq(r.response.status, 502)
    T.eq(r.response.headers["x-frame-options"], "DENY")
end)

T.case("config replaces values and 'off' drops a header", function()
    local f = T.filter("response_headers.lua", { hsts = "off", frame_options = "SAMEORIGIN",
                                                 referrer_policy = " no-referrer ", server_timing = "off" })
    local r = run(f, { status = 200 })
    T.eq(r.response.headers["strict-transport-security"], nil)
    T.eq(r.response.headers["x-frame-options"], "SAMEORIGIN")
    T.eq(r.response.headers["referrer-policy"], "no-referrer")
    T.eq(r.response.headers["x-content-type-options"], "nosniff")
    T.eq(r.response.headers["server-timing"], nil)
end)

T.case("each request is timed on its own", function()
    local f = T.filter("response_headers.lua", {})
    local slow, fast = T.request{}, T.request{}
    f:request(slow)
    local t0 = sk.now()
    while sk.now() - t0 < 0.02 do end
    f:request(fast)
    f:response(fast, { status = 200 })
    f:response(slow, { status = 200 })
    T.ok(timing(slow.response.headers) > timing(fast.response.headers),
        "slow " .. timing(slow.response.headers) .. " fast " .. timing(fast.response.headers))
end)
