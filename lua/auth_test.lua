-- auth_test.lua — offline tests of auth.lua: `sidekick lua-test lua/auth_test.lua`

local KEYS = { keys = "ops:s3cr3t, ci : 0ther ,l3gacy" }

T.case("a valid ID:KEY key goes on, with the key removed and the id set", function()
    local f = T.filter("auth.lua", KEYS)
    local r = T.request{ path = "/v1/x", headers = { ["x-api-key"] = "s3cr3t", ["x-other"] = "y" } }
    local res = f:request(r)
    T.eq(res.action, "continue")
    T.eq(r.headers["x-api-key"], nil, "the key is not sent upstream")
    T.eq(r.headers["x-authenticated-key-id"], "ops")
    T.eq(r.headers["x-other"], "y", "other headers untouched")
    T.eq(r.path, "/v1/x")
end)

T.case("ids and keys are trimmed", function()
    local f = T.filter("auth.lua", KEYS)
    local r = T.request{ headers = { ["x-api-key"] = "0ther" } }
    T.eq(f:request(r).action, "continue")
    T.eq(r.headers["x-authenticated-key-id"], "ci")
end)

T.case("a bare key gets a derived id that is not the key", function()
    local f = T.filter("auth.lua", KEYS)
    local r = T.request{ headers = { ["x-api-key"] = "l3gacy" } }
    T.eq(f:request(r).action, "continue")
    local id = r.headers["x-authenticated-key-id"]
    T.ok(type(id) == "string" and id:match("^key%-%x%x%x%x%x%x%x%x$"), "id looks like key-<hex>: " .. tostring(id))
    T.ok(not id:find("l3gacy", 1, true), "the id does not contain the key")
    -- the same key always maps to the same id (another worker, another filter instance)
    local r2 = T.request{ headers = { ["x-api-key"] = "l3gacy" } }
    T.filter("auth.lua", KEYS):request(r2)
    T.eq(r2.headers["x-authenticated-key-id"], id)
end)

T.case("the header name is matched in any case", function()
    local f = T.filter("auth.lua", KEYS)
    local r = T.request{ headers = { ["X-Api-Key"] = "s3cr3t" } }
    T.eq(f:request(r).action, "continue")
    T.eq(r.headers["x-authenticated-key-id"], "ops")
end)

T.case("a missing key gets 401 with a hint and no upstream request", function()
    local f = T.filter("auth.lua", KEYS)
    local r = T.request{ path = "/v1/x" }
    local res = f:request(r)
    T.eq(res.action, "respond")
    T.eq(res.status, 401)
    T.eq(res.headers["content-type"], "text/plain")
    T.ok(res.headers["www-authenticate"] and res.headers["www-authenticate"]:find("x-api-key", 1, true),
        "www-authenticate names the header: " .. tostring(res.headers["www-authenticate"]))
    T.ok(res.body and res.body:find("missing", 1, true), "body says why: " .. tostring(res.body))
end)

T.case("a wrong key gets 401", function()
    local f = T.filter("auth.lua", KEYS)
    local res = f:request(T.request{ headers = { ["x-api-key"] = "S3CR3T" } })
    T.eq(res.action, "respond")
    T.eq(res.status, 401)
    T.ok(res.body:find("invalid", 1, true), res.body)
end)

T.case("an empty key, an id or a key prefix are refused", function()
    local f = T.filter("auth.lua", KEYS)
    for _, k in ipairs{ "", "ops", "ops:s3cr3t", "s3cr3", "s3cr3t " .. "x" } do
        local res = f:request(T.request{ headers = { ["x-api-key"] = k } })
        T.eq(res.status, 401, "key '" .. k .. "'")
    end
end)

T.case("a client cannot forge x-authenticated-key-id", function()
    local f = T.filter("auth.lua", KEYS)
    local r = T.request{ headers = { ["x-api-key"] = "s3cr3t", ["x-authenticated-key-id"] = "admin" } }
    T.eq(f:request(r).action, "continue")
    T.eq(r.headers["x-authenticated-key-id"], "ops")
end)

T.case("lua.header names another header; the default one is then ignored", function()
    local f = T.filter("auth.lua", { header = "Authorization-Token", keys = "k1" })
    local ok = T.request{ headers = { ["authorization-token"] = "k1" } }
    T.eq(f:request(ok).action, "continue")
    T.eq(ok.headers["authorization-token"], nil)
    local res = f:request(T.request{ headers = { ["x-api-key"] = "k1" } })
    T.eq(res.status, 401)
    T.ok(res.headers["www-authenticate"]:find("authorization-token", 1, true))
end)

T.case("no lua.keys fails closed with an error", function()
    for _, cfg in ipairs{ {}, { keys = "" }, { keys = " , " } } do
        local res = T.filter("auth.lua", cfg):request(T.request{ headers = { ["x-api-key"] = "" } })
        T.eq(res.action, "error")
        T.ok(res.error:find("lua.keys", 1, true), res.error)
    end
end)

T.case("an empty id in ID:KEY is a config error", function()
    local res = T.filter("auth.lua", { keys = ":abc" }):request(T.request{ headers = { ["x-api-key"] = "abc" } })
    T.eq(res.action, "error")
end)

T.case("auth has no response hook side effects", function()
    local f = T.filter("auth.lua", KEYS)
    local r = T.request{ headers = { ["x-api-key"] = "s3cr3t" } }
    f:request(r)
    local res = f:response(r, { status = 200, headers = { ["content-type"] = "text/plain" } })
    T.eq(res.action, "continue")
    T.eq(r.response.status, 200)
    T.eq(r.response.headers, { ["content-type"] = "text/plain" })
end)
