-- lib/util.lua — small helpers shared by the example route filters.
--
-- Load it from a filter with `local util = require("lib.util")` (modules resolve
-- against lua_dir, so this file is lua_dir/lib/util.lua). Everything here is
-- pure: no request object, no state, so it is safe to share between routes.

local bit = bit
local byte, find, format, gsub, sub = string.byte, string.find, string.format, string.gsub, string.sub

local M = {}

-- trim(s) -> s without leading and trailing whitespace.
function M.trim(s)
    return (gsub(s, "^%s*(.-)%s*$", "%1"))
end

-- split_list(s) -> array of the comma-separated items of s, each trimmed,
-- empty items dropped. nil or "" gives {}.
--   split_list(" a, b,,c ") --> { "a", "b", "c" }
function M.split_list(s)
    local out = {}
    if s == nil then return out end
    local start = 1
    while true do
        local comma = find(s, ",", start, true)
        local item = M.trim(sub(s, start, comma and comma - 1 or #s))
        if item ~= "" then out[#out + 1] = item end
        if not comma then return out end
        start = comma + 1
    end
end

-- set_of(list, fold) -> table whose keys are the items of `list` (values true).
-- With fold = true the keys are lower-cased.
function M.set_of(list, fold)
    local set = {}
    for _, v in ipairs(list) do
        set[fold and v:lower() or v] = true
    end
    return set
end

-- starts_with(s, prefix) -> true when s begins with prefix (plain, no patterns).
function M.starts_with(s, prefix)
    return sub(s, 1, #prefix) == prefix
end

-- fnv1a32(s) -> the 32-bit FNV-1a hash of s as a non-negative integer
-- (0 .. 2^32-1). Deterministic across workers, restarts and machines, so it
-- can place a client in a stable bucket.
--
-- The FNV prime 16777619 is 2^24 + 403; multiplying by it as a shift plus a
-- small product keeps every intermediate value exact in a double (a plain
-- h * 16777619 would reach 2^56 and lose low bits).
function M.fnv1a32(s)
    local h = -2128831035 -- 2166136261 (the FNV offset basis) as a signed 32-bit value
    for i = 1, #s do
        h = bit.bxor(h, byte(s, i))
        h = bit.tobit(bit.lshift(h, 24) + h * 403)
    end
    if h < 0 then h = h + 4294967296 end
    return h
end

-- tonumber_in(s, lo, hi) -> the number in string s when it lies in [lo, hi],
-- else nil.
function M.tonumber_in(s, lo, hi)
    local n = tonumber(s)
    if n == nil or n ~= n or n < lo or n > hi then return nil end
    return n
end

-- hex32(n) -> n (0 .. 2^32-1) as 8 lower-case hex digits.
function M.hex32(n)
    return format("%08x", n)
end

-- per_config(parse) -> a function get(cfg) that returns parse(cfg), computed
-- once per config table and remembered.
--
-- A route's module state lives as long as the worker, and r:config() hands out
-- the route's config table, so the parsed form is kept in a table keyed by that
-- config table. The keys are weak: should a config table ever be dropped (a
-- reload), its entry goes with it instead of piling up.
function M.per_config(parse)
    local cache = setmetatable({}, { __mode = "k" })
    return function(cfg)
        local v = cache[cfg]
        if v == nil then
            v = parse(cfg)
            cache[cfg] = v
        end
        return v
    end
end

return M
