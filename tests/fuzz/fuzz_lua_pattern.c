/*
 * fuzz_lua_pattern.c — libFuzzer target for the Lua pattern functions of
 * filter states (core/ext/lua_pattern.c): the input is "PATTERN\nSUBJECT"; find
 * (also plain and with an init), match, gmatch and gsub (string, function
 * and table replacements) must give the same results as LuaJIT's own, or
 * both fail. A difference aborts. Subject and pattern are cut to 64 and 24
 * bytes, and patterns with more than 4 quantifiers are skipped, so that
 * backtracking stays small (the proxy's budget does not apply here).
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_filter.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char diff_src[] =
    "local ours, theirs = ...\n"
    "local function pack(ok, ...) return { ok = ok, n = select('#', ...), ... } end\n"
    "local function same(a, b)\n"
    "  if a.ok ~= b.ok then return false end\n"
    "  if not a.ok then return true end\n"
    "  if a.n ~= b.n then return false end\n"
    "  for i = 1, a.n do if a[i] ~= b[i] then return false end end\n"
    "  return true\n"
    "end\n"
    "local function gm(l, s, p)\n"
    "  local out = {}\n"
    "  for a, b in l.gmatch(s, p) do out[#out + 1] = tostring(a) .. '|' .. tostring(b); if #out > 40 then "
    "break end end\n"
    "  return table.concat(out, ';')\n"
    "end\n"
    "local repls = { '<%0>', '%1', '%%', '%z', function(a) return a end, { a = 'A', b = false } }\n"
    "return function(s, p, init)\n"
    "  local calls = {\n"
    "    function(l) return l.find(s, p, init) end,\n"
    "    function(l) return l.find(s, p, init, true) end,\n"
    "    function(l) return l.match(s, p, init) end,\n"
    "    function(l) return gm(l, s, p) end,\n"
    "  }\n"
    "  for _, r in ipairs(repls) do calls[#calls + 1] = function(l) return l.gsub(s, p, r, 3) end end\n"
    "  for i, c in ipairs(calls) do\n"
    "    local a, b = pack(pcall(c, ours)), pack(pcall(c, theirs))\n"
    "    if not same(a, b) then\n"
    "      return string.format('call %d on %q, %q, %s: ours %s %s, LuaJIT %s %s', i, s, p, tostring(init),\n"
    "                           tostring(a.ok), tostring(a[1]), tostring(b.ok), tostring(b[1]))\n"
    "    end\n"
    "  end\n"
    "end\n";

static lua_State *L;
static int check_ref;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    L = luaL_newstate();
    if (!L) abort();
    luaL_openlibs(L);
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
    if (luaL_loadbuffer(L, diff_src, sizeof(diff_src) - 1, "=diff") != 0) abort();
    lua_pushvalue(L, ours);
    lua_pushvalue(L, theirs);
    if (lua_pcall(L, 2, 1, 0) != 0) abort();
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L) LLVMFuzzerInitialize(NULL, NULL);
    const char *d = (const char *)data;
    const char *nl = memchr(d, '\n', size);
    size_t pl = nl ? (size_t)(nl - d) : size;
    const char *s = nl ? nl + 1 : "";
    size_t sl = nl ? size - pl - 1 : 0;
    if (pl > 24) pl = 24;
    if (sl > 64) sl = 64;
    /* Both matchers backtrack exponentially on nested quantifiers (LuaJIT's
     * has no budget here): keep to patterns with a few of them. */
    int quantifiers = 0;
    for (size_t i = 0; i < pl; i++) quantifiers += d[i] && strchr("*+-?", d[i]) != NULL;
    if (quantifiers > 4) return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushlstring(L, s, sl);
    lua_pushlstring(L, d, pl);
    if (sl > 0 && (unsigned char)s[0] % 3 == 0)
        lua_pushinteger(L, (lua_Integer)((unsigned char)s[0] % 9) - 4);
    else
        lua_pushnil(L);
    if (lua_pcall(L, 3, 1, 0) != 0) {
        fprintf(stderr, "fuzz_lua_pattern: %s\n", lua_tostring(L, -1));
        abort();
    }
    if (lua_isstring(L, -1)) {
        fprintf(stderr, "fuzz_lua_pattern: mismatch: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
