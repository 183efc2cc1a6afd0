/*
 * test_lua_pattern.c — sidekick's string.find/match/gmatch/gsub
 * (core/ext/lua_pattern.c) against LuaJIT's own, on fixed cases and on many
 * generated patterns and subjects: same results, or both an error.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lua_filter.h"

/* The comparison runs in Lua: `ours` and `theirs` are the two string tables. */
static const char differ_src[] =
    "local ours, theirs, cases, seed, rounds = ...\n"
    "local function pack(ok, ...) return { ok = ok, n = select('#', ...), ... } end\n"
    "local function same(a, b)\n"
    "  if a.ok ~= b.ok then return false end\n"
    "  if not a.ok then return true end -- both errors: messages may differ\n"
    "  if a.n ~= b.n then return false end\n"
    "  for i = 1, a.n do if a[i] ~= b[i] then return false end end\n"
    "  return true\n"
    "end\n"
    "local function show(r)\n"
    "  local t = {}\n"
    "  for i = 1, r.n do t[#t + 1] = type(r[i]) == 'string' and string.format('%q', r[i]) or tostring(r[i]) "
    "end\n"
    "  return (r.ok and 'ok ' or 'error ') .. table.concat(t, ', ')\n"
    "end\n"
    "local bad = {}\n"
    "local function gm(lib, s, p)\n"
    "  local out = {}\n"
    "  for a, b, c in lib.gmatch(s, p) do\n"
    "    out[#out + 1] = tostring(a) .. '|' .. tostring(b) .. '|' .. tostring(c)\n"
    "    if #out > 50 then break end\n"
    "  end\n"
    "  return table.concat(out, ';')\n"
    "end\n"
    "local repls = { '<%0>', '%1-%2', 'x', '%%', '%a', '', '%9',\n"
    "                function(a, b) return b and (a .. b) or nil end, { a = 'A', ab = false, b = 1 } }\n"
    "local function try(s, p, init)\n"
    "  local checks = {\n"
    "    { 'find', function(l) return l.find(s, p, init) end },\n"
    "    { 'find plain', function(l) return l.find(s, p, init, true) end },\n"
    "    { 'match', function(l) return l.match(s, p, init) end },\n"
    "    { 'gmatch', function(l) return gm(l, s, p) end },\n"
    "  }\n"
    "  for i, r in ipairs(repls) do\n"
    "    checks[#checks + 1] = { 'gsub ' .. i, function(l) return l.gsub(s, p, r) end }\n"
    "    checks[#checks + 1] = { 'gsub max ' .. i, function(l) return l.gsub(s, p, r, 2) end }\n"
    "  end\n"
    "  for _, c in ipairs(checks) do\n"
    "    local a, b = pack(pcall(c[2], ours)), pack(pcall(c[2], theirs))\n"
    "    if not same(a, b) and #bad < 20 then\n"
    "      bad[#bad + 1] = string.format('%s(%q, %q, %s): ours %s, LuaJIT %s', c[1], s, p, tostring(init), "
    "show(a), show(b))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for _, c in ipairs(cases) do try(c[1], c[2], c[3]) end\n"
    "-- generated: patterns from pieces, subjects from a small alphabet\n"
    "local pieces = { 'a', 'b', '.', '%a', '%d', '%g', '%G', '%c', '%x', '%u', '%l', '%z', '%s', '%w', '%p', "
    "'%A', '[ab]', '[^a]', '[a-c]', '[%d]', "
    "'[%]]',\n"
    "  '*', '+', '-', '?', '(', ')', '()', '%1', '%2', '%b()', '%f[%w]', '%f[%W]', '^', '$', '%', '[', ']', "
    "'x', ' ', '%.', '%%' }\n"
    "local chars = { 'a', 'b', 'c', '1', '2', ' ', '(', ')', '.', '%', 'x', 'A', '\\0', ']' }\n"
    "local r = seed\n"
    "local function rnd(n) r = (r * 1103515245 + 12345) % 2147483648; return r % n + 1 end\n"
    "for _ = 1, rounds do\n"
    "  local p, s = {}, {}\n"
    "  for i = 1, rnd(6) do p[i] = pieces[rnd(#pieces)] end\n"
    "  for i = 1, rnd(12) - 1 do s[i] = chars[rnd(#chars)] end\n"
    "  local init = ({ nil, 1, 2, -1, -3, 0, 20 })[rnd(7)]\n"
    "  try(table.concat(s), table.concat(p), init)\n"
    "end\n"
    "return bad\n";

static void fixed_and_generated(void)
{
    lua_State *L = luaL_newstate();
    ASSERT(L);
    luaL_openlibs(L);
    /* theirs: LuaJIT's string table; ours: a copy with the four replaced */
    lua_getglobal(L, "string");
    int theirs = lua_gettop(L);
    lua_newtable(L);
    int ours = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, theirs)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, ours);
    }
    sk_lua_open_patterns(L, ours);

    ASSERT(luaL_loadbuffer(L, differ_src, sizeof(differ_src) - 1, "=differ") == 0);
    lua_pushvalue(L, ours);
    lua_pushvalue(L, theirs);
    static const char *const cases[][2] = {
        {"hello world", "o w"},
        {"hello world", "(o)(r)"},
        {"hello", "l+"},
        {"hello", "()ll()"},
        {"key=value", "(%w+)=(%w+)"},
        {"  trim  ", "^%s*(.-)%s*$"},
        {"THE (quick) fox", "%b()"},
        {"THE (quick) fox", "%f[%a]%a+"},
        {"aaa", "a-b"},
        {"", ""},
        {"abc", ""},
        {"abc", "^"},
        {"abc", "$"},
        {"a.b.c", "%."},
        {"a.b.c", "."},
        {"x", "%"},
        {"x", "[a"},
        {"x", "(()"},
        {"x", "%1"},
        {"abab", "(ab)%1"},
        {"/v1/users/42", "^/v1/(.*)"},
        {"a,b,,c", "([^,]*)"},
        {"10.0.0.1", "^(%d+)%.(%d+)%.(%d+)%.(%d+)$"},
        {"Mozilla/5.0 curl", "curl"},
    };
    lua_createtable(L, (int)SK_ARRAY_LEN(cases), 0);
    for (size_t i = 0; i < SK_ARRAY_LEN(cases); i++) {
        lua_createtable(L, 2, 0);
        lua_pushstring(L, cases[i][0]);
        lua_rawseti(L, -2, 1);
        lua_pushstring(L, cases[i][1]);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_pushinteger(L, getenv("SEED") ? atoi(getenv("SEED")) : 12345);
    lua_pushinteger(L, getenv("ROUNDS") ? atoi(getenv("ROUNDS")) : 20000);
    int rc = lua_pcall(L, 5, 1, 0);
    if (rc != 0) fprintf(stderr, "differ: %s\n", lua_tostring(L, -1));
    CHECK(rc == 0);
    if (rc == 0) {
        size_t n = lua_objlen(L, -1);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, (int)i);
            fprintf(stderr, "mismatch: %s\n", lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        CHECK(n == 0);
    }
    lua_close(L);
}

int main(void)
{
    fixed_and_generated();
    printf("test_lua_pattern: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
