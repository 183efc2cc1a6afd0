-- util_test.lua — offline tests of lib/util.lua: `sidekick lua-test lua/util_test.lua`

local util = require("lib.util")

T.case("trim", function()
    T.eq(util.trim("  a b \t"), "a b")
    T.eq(util.trim(""), "")
    T.eq(util.trim("   "), "")
end)

T.case("split_list trims and drops empty items", function()
    T.eq(util.split_list(" a, b,,c , "), { "a", "b", "c" })
    T.eq(util.split_list("one"), { "one" })
    T.eq(util.split_list(""), {})
    T.eq(util.split_list(nil), {})
    T.eq(util.split_list("2001:db8::1, x"), { "2001:db8::1", "x" })
end)

T.case("set_of, with and without case folding", function()
    T.eq(util.set_of({ "A", "b" }), { A = true, b = true })
    T.eq(util.set_of({ "A", "b" }, true), { a = true, b = true })
end)

T.case("starts_with is plain", function()
    T.ok(util.starts_with("/admin/x", "/admin"))
    T.ok(util.starts_with("x", ""))
    T.ok(not util.starts_with("/adm", "/admin"))
    T.ok(not util.starts_with("/a.c", "/a%."))
end)

T.case("fnv1a32 matches the reference vectors", function()
    T.eq(util.fnv1a32(""), 0x811c9dc5)
    T.eq(util.fnv1a32("a"), 0xe40c292c)
    T.eq(util.fnv1a32("foobar"), 0xbf9cf968)
    T.eq(util.hex32(util.fnv1a32("a")), "e40c292c")
    local long = string.rep("sidekick", 1000)
    local h = util.fnv1a32(long)
    T.ok(h >= 0 and h < 2 ^ 32 and h == math.floor(h), "in range: " .. h)
end)

T.case("tonumber_in", function()
    T.eq(util.tonumber_in("12.5", 0, 100), 12.5)
    T.eq(util.tonumber_in("0", 0, 100), 0)
    T.eq(util.tonumber_in("100", 0, 100), 100)
    T.eq(util.tonumber_in("100.1", 0, 100), nil)
    T.eq(util.tonumber_in("x", 0, 100), nil)
    T.eq(util.tonumber_in("nan", 0, 100), nil)
end)

T.case("per_config parses once per config table", function()
    local calls = 0
    local get = util.per_config(function(cfg)
        calls = calls + 1
        return { v = cfg.v }
    end)
    local a, b = { v = "a" }, { v = "b" }
    T.eq(get(a).v, "a")
    T.eq(get(a).v, "a")
    T.eq(get(b).v, "b")
    T.eq(calls, 2)
end)

T.case("per_config does not cache a failed parse", function()
    local calls = 0
    local get = util.per_config(function()
        calls = calls + 1
        error("bad", 0)
    end)
    local cfg = {}
    T.ok(not pcall(get, cfg))
    T.ok(not pcall(get, cfg))
    T.eq(calls, 2)
end)
