/*
 * lua_pattern.c — string.find, string.match, string.gmatch and string.gsub
 * for filter states, with Lua 5.1 pattern semantics and a step counter.
 *
 * LuaJIT's own versions run a backtracking matcher in C, where the budget's
 * count hook never runs: `string.find(("a"):rep(300), "(.-)(.-)(.-)b")`
 * holds a worker for seconds. These count the matcher's steps and ask
 * lua_filter.c every SK_PATTERN_CHECK steps whether the running script is
 * past its budget; if so the match stops with an error, like any other
 * budget stop. The matcher (match, max_expand, min_expand, the capture and
 * class helpers, str_find_aux, gmatch and gsub) is adapted from the pattern
 * matching of Lua 5.1's lstrlib.c, which LuaJIT's lib_string.c also derives
 * from: same structure and limits, plus the step counter. The tests compare
 * the results with LuaJIT's built-ins.
 *
 * Lua 5.1 is distributed under this license:
 *
 * Copyright (C) 1994-2012 Lua.org, PUC-Rio.
 *
 * Permission is hereby granted, free of charge, to any person obtaining
 * a copy of this software and associated documentation files (the
 * "Software"), to deal in the Software without restriction, including
 * without limitation the rights to use, copy, modify, merge, publish,
 * distribute, sublicense, and/or sell copies of the Software, and to
 * permit persons to whom the Software is furnished to do so, subject to
 * the following conditions:
 *
 * The above copyright notice and this permission notice shall be
 * included in all copies or substantial portions of the Software.
 *
 * THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
 * EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 * MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
 * IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
 * CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
 * TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
 * SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include <string.h>

#include "lua_filter.h"

#define MAX_CAPTURES     32
#define MAX_DEPTH        200 /* nesting of the recursive matcher */
#define SK_PATTERN_CHECK 4096
#define CAP_UNFINISHED   (-1)
#define CAP_POSITION     (-2)
#define ESC              '%'
#define SPECIALS         "^$*+?.([%-"

typedef struct mstate {
    const char *src, *src_end; /* the subject */
    const char *pat_end;       /* end of the pattern */
    lua_State *L;
    int depth;      /* recursion left */
    unsigned steps; /* until the next budget check */
    int level;      /* captures open or closed */
    struct {
        const char *init;
        ptrdiff_t len;
    } cap[MAX_CAPTURES];
} mstate;

static const char *match(mstate *ms, const char *s, const char *p);

static void step(mstate *ms)
{
    if (--ms->steps == 0) {
        ms->steps = SK_PATTERN_CHECK;
        if (sk_lua_over_budget(ms->L)) luaL_error(ms->L, "lua_budget exceeded (in a pattern match)");
    }
}

static int check_capture(mstate *ms, int l)
{
    l -= '1';
    if (l < 0 || l >= ms->level || ms->cap[l].len == CAP_UNFINISHED)
        return luaL_error(ms->L, "invalid capture index");
    return l;
}

static int capture_to_close(mstate *ms)
{
    int level = ms->level;
    for (level--; level >= 0; level--)
        if (ms->cap[level].len == CAP_UNFINISHED) return level;
    return luaL_error(ms->L, "invalid pattern capture");
}

/* End of the single-character class at p. */
static const char *class_end(mstate *ms, const char *p)
{
    switch (*p++) {
    case ESC:
        if (p >= ms->pat_end) luaL_error(ms->L, "malformed pattern (ends with '%%')");
        return p + 1;
    case '[':
        if (*p == '^') p++;
        do { /* look for a ']' */
            if (p >= ms->pat_end) luaL_error(ms->L, "malformed pattern (missing ']')");
            if (*(p++) == ESC && p < ms->pat_end) p++; /* skip escapes (e.g. '%]') */
        } while (*p != ']');
        return p + 1;
    default: return p;
    }
}

static int in_class(int c, int cl)
{
    int res;
    int lower = cl | 0x20;
    switch (lower) {
    case 'a': res = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); break;
    case 'c': res = c < 32 || c == 127; break;
    case 'd': res = c >= '0' && c <= '9'; break;
    case 'g': res = c > 32 && c < 127; break; /* LuaJIT has Lua 5.2's %g */
    case 'l': res = c >= 'a' && c <= 'z'; break;
    case 'p':
        res = (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
        break;
    case 's': res = c == ' ' || (c >= '\t' && c <= '\r'); break;
    case 'u': res = c >= 'A' && c <= 'Z'; break;
    case 'w': res = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); break;
    case 'x': res = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); break;
    case 'z': res = c == 0; break;
    default: return cl == c;
    }
    if (cl >= 'A' && cl <= 'Z') return !res; /* upper case: the complement */
    return res;
}

/* Does c match the set [...] from p (at '[') to ec (at ']')? */
static int in_set(int c, const char *p, const char *ec)
{
    int sig = 1;
    if (*(p + 1) == '^') {
        sig = 0;
        p++;
    }
    while (++p < ec) {
        if (*p == ESC) {
            p++;
            if (in_class(c, (unsigned char)*p)) return sig;
        } else if (*(p + 1) == '-' && p + 2 < ec) {
            p += 2;
            if ((unsigned char)*(p - 2) <= c && c <= (unsigned char)*p) return sig;
        } else if ((unsigned char)*p == c) {
            return sig;
        }
    }
    return !sig;
}

static int single_match(int c, const char *p, const char *ep)
{
    switch (*p) {
    case '.': return 1;
    case ESC: return in_class(c, (unsigned char)*(p + 1));
    case '[': return in_set(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

static const char *match_balance(mstate *ms, const char *s, const char *p)
{
    if (p + 1 >= ms->pat_end) luaL_error(ms->L, "missing arguments to '%%b'");
    if (*s != *p) return NULL;
    int b = *p, e = *(p + 1), cont = 1;
    while (++s < ms->src_end) {
        step(ms);
        if (*s == e) {
            if (--cont == 0) return s + 1;
        } else if (*s == b) {
            cont++;
        }
    }
    return NULL;
}

static const char *max_expand(mstate *ms, const char *s, const char *p, const char *ep)
{
    ptrdiff_t i = 0;
    while (s + i < ms->src_end && single_match((unsigned char)*(s + i), p, ep)) {
        step(ms);
        i++;
    }
    while (i >= 0) { /* try with the longest run first */
        const char *res = match(ms, s + i, ep + 1);
        if (res) return res;
        i--;
    }
    return NULL;
}

static const char *min_expand(mstate *ms, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *res = match(ms, s, ep + 1);
        if (res) return res;
        if (s < ms->src_end && single_match((unsigned char)*s, p, ep))
            s++;
        else
            return NULL;
    }
}

static const char *start_capture(mstate *ms, const char *s, const char *p, int what)
{
    if (ms->level >= MAX_CAPTURES) luaL_error(ms->L, "too many captures");
    ms->cap[ms->level].init = s;
    ms->cap[ms->level].len = what;
    ms->level++;
    const char *res = match(ms, s, p);
    if (!res) ms->level--; /* undo */
    return res;
}

static const char *end_capture(mstate *ms, const char *s, const char *p)
{
    int l = capture_to_close(ms);
    ms->cap[l].len = s - ms->cap[l].init;
    const char *res = match(ms, s, p);
    if (!res) ms->cap[l].len = CAP_UNFINISHED;
    return res;
}

static const char *match_capture(mstate *ms, const char *s, int l)
{
    l = check_capture(ms, l);
    size_t len = (size_t)ms->cap[l].len;
    if ((size_t)(ms->src_end - s) >= len && memcmp(ms->cap[l].init, s, len) == 0) return s + len;
    return NULL;
}

/* The matcher: the subject from s against the pattern from p. End of the match or NULL. */
static const char *match(mstate *ms, const char *s, const char *p)
{
    if (ms->depth-- == 0) luaL_error(ms->L, "pattern too complex");
    step(ms);
    for (;;) {
        if (p == ms->pat_end) break;
        switch (*p) {
        case '(':
            s = *(p + 1) == ')' ? start_capture(ms, s, p + 2, CAP_POSITION)
                                : start_capture(ms, s, p + 1, CAP_UNFINISHED);
            goto done;
        case ')': s = end_capture(ms, s, p + 1); goto done;
        case ESC:
            if (p + 1 < ms->pat_end && *(p + 1) == 'b') {
                s = match_balance(ms, s, p + 2);
                if (s) {
                    p += 4;
                    continue;
                }
                goto done;
            }
            if (p + 1 < ms->pat_end && *(p + 1) == 'f') {
                p += 2;
                if (*p != '[') luaL_error(ms->L, "missing '[' after '%%f' in pattern");
                const char *ep = class_end(ms, p);
                int prev = s == ms->src ? 0 : (unsigned char)*(s - 1);
                int cur = s < ms->src_end ? (unsigned char)*s : 0;
                if (!in_set(prev, p, ep - 1) && in_set(cur, p, ep - 1)) {
                    p = ep;
                    continue;
                }
                s = NULL;
                goto done;
            }
            if (p + 1 < ms->pat_end && *(p + 1) >= '0' && *(p + 1) <= '9') {
                s = match_capture(ms, s, (unsigned char)*(p + 1));
                if (s) {
                    p += 2;
                    continue;
                }
                goto done;
            }
            goto dflt;
        case '$':
            if (p + 1 == ms->pat_end) {
                s = s == ms->src_end ? s : NULL;
                goto done;
            }
            goto dflt;
        default:
        dflt : {
            const char *ep = class_end(ms, p);
            int m = s < ms->src_end && single_match((unsigned char)*s, p, ep);
            switch (*ep) {
            case '?': {
                const char *res;
                if (m && (res = match(ms, s + 1, ep + 1))) {
                    s = res;
                    goto done;
                }
                p = ep + 1;
                continue;
            }
            case '*': s = max_expand(ms, s, p, ep); goto done;
            case '+': s = m ? max_expand(ms, s + 1, p, ep) : NULL; goto done;
            case '-': s = min_expand(ms, s, p, ep); goto done;
            default:
                if (!m) {
                    s = NULL;
                    goto done;
                }
                s++;
                p = ep;
                continue;
            }
        }
        }
    }
done:
    ms->depth++;
    return s;
}

static void push_one_capture(mstate *ms, int i, const char *s, const char *e)
{
    if (i >= ms->level) {
        if (i == 0)
            lua_pushlstring(ms->L, s, (size_t)(e - s)); /* the whole match */
        else
            luaL_error(ms->L, "invalid capture index");
        return;
    }
    ptrdiff_t l = ms->cap[i].len;
    if (l == CAP_UNFINISHED) luaL_error(ms->L, "unfinished capture");
    if (l == CAP_POSITION)
        lua_pushinteger(ms->L, ms->cap[i].init - ms->src + 1);
    else
        lua_pushlstring(ms->L, ms->cap[i].init, (size_t)l);
}

static int push_captures(mstate *ms, const char *s, const char *e)
{
    int n = ms->level == 0 && s ? 1 : ms->level;
    luaL_checkstack(ms->L, n, "too many captures");
    for (int i = 0; i < n; i++) push_one_capture(ms, i, s, e);
    return n;
}

static void ms_init(mstate *ms, lua_State *L, const char *s, size_t ls, const char *p, size_t lp)
{
    ms->L = L;
    ms->src = s;
    ms->src_end = s + ls;
    ms->pat_end = p + lp;
    ms->depth = MAX_DEPTH;
    ms->steps = SK_PATTERN_CHECK;
    ms->level = 0;
}

static ptrdiff_t start_pos(lua_Integer pos, size_t len)
{
    if (pos < 0) pos += (lua_Integer)len + 1;
    return pos >= 0 ? (ptrdiff_t)pos : 0;
}

/* Any pattern character in the whole pattern (NULs included, as LuaJIT checks it)? */
static bool has_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (p[i] && strchr(SPECIALS, p[i])) return true;
    return false;
}

static int str_find_aux(lua_State *L, int find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    ptrdiff_t init = start_pos(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init < 0)
        init = 0;
    else if ((size_t)init > ls)
        init = (ptrdiff_t)ls; /* as Lua 5.1 and LuaJIT: past the end means at the end */
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        /* a plain search (LuaJIT does the same when there are no specials) */
        const char *hit = NULL;
        if (lp == 0) {
            hit = s + init;
        } else if (lp <= ls - (size_t)init) {
            const char *q = s + init, *end = s + ls - lp + 1;
            for (; q < end; q++) {
                q = memchr(q, p[0], (size_t)(end - q));
                if (!q) break;
                if (memcmp(q, p, lp) == 0) {
                    hit = q;
                    break;
                }
            }
        }
        if (!hit) {
            lua_pushnil(L);
            return 1;
        }
        lua_pushinteger(L, hit - s + 1);
        lua_pushinteger(L, hit - s + (ptrdiff_t)lp);
        return 2;
    }
    mstate ms;
    lp = strlen(p); /* a pattern ends at its first NUL */
    int anchor = *p == '^';
    if (anchor) p++, lp--;
    ms_init(&ms, L, s, ls, p, lp);
    const char *s1 = s + init;
    do {
        ms.level = 0;
        ms.depth = MAX_DEPTH;
        const char *e = match(&ms, s1, p);
        if (e) {
            if (find) {
                lua_pushinteger(L, s1 - s + 1);
                lua_pushinteger(L, e - s);
                return push_captures(&ms, NULL, NULL) + 2;
            }
            return push_captures(&ms, s1, e);
        }
    } while (s1++ < ms.src_end && !anchor);
    lua_pushnil(L);
    return 1;
}

static int str_find(lua_State *L)
{
    return str_find_aux(L, 1);
}

static int str_match(lua_State *L)
{
    return str_find_aux(L, 0);
}

/* gmatch's iterator; upvalues: subject, pattern, position. */
static int gmatch_aux(lua_State *L)
{
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
    lp = strlen(p);
    mstate ms;
    ms_init(&ms, L, s, ls, p, lp);
    for (const char *src = s + (size_t)lua_tointeger(L, lua_upvalueindex(3)); src <= ms.src_end; src++) {
        ms.level = 0;
        ms.depth = MAX_DEPTH;
        const char *e = match(&ms, src, p);
        if (e) {
            lua_Integer newstart = e - s;
            if (e == src) newstart++; /* empty match: go at least one position */
            lua_pushinteger(L, newstart);
            lua_replace(L, lua_upvalueindex(3));
            return push_captures(&ms, src, e);
        }
    }
    return 0;
}

static int str_gmatch(lua_State *L)
{
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    lua_settop(L, 2);
    lua_pushinteger(L, 0);
    lua_pushcclosure(L, gmatch_aux, 3);
    return 1;
}

static void add_string(mstate *ms, luaL_Buffer *b, const char *s, const char *e)
{
    size_t l;
    const char *news = lua_tolstring(ms->L, 3, &l);
    for (size_t i = 0; i < l; i++) {
        if (news[i] != ESC) {
            luaL_addchar(b, news[i]);
            continue;
        }
        i++; /* skip ESC */
        if (i >= l || news[i] < '0' || news[i] > '9') {
            if (i < l) luaL_addchar(b, news[i]); /* "%x" is x, as in Lua 5.1 */
        } else if (news[i] == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else {
            push_one_capture(ms, news[i] - '1', s, e);
            luaL_addvalue(b); /* may be a position capture: added as a number */
        }
    }
}

static void add_value(mstate *ms, luaL_Buffer *b, const char *s, const char *e)
{
    lua_State *L = ms->L;
    switch (lua_type(L, 3)) {
    case LUA_TNUMBER:
    case LUA_TSTRING: add_string(ms, b, s, e); return;
    case LUA_TFUNCTION: {
        lua_pushvalue(L, 3);
        int n = push_captures(ms, s, e);
        lua_call(L, n, 1);
        break;
    }
    case LUA_TTABLE:
        push_one_capture(ms, 0, s, e);
        lua_gettable(L, 3);
        break;
    default: break;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: keep the original */
        lua_pop(L, 1);
        lua_pushlstring(L, s, (size_t)(e - s));
    } else if (!lua_isstring(L, -1)) {
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    }
    luaL_addvalue(b);
}

static int str_gsub(lua_State *L)
{
    size_t srcl, lp;
    const char *src = luaL_checklstring(L, 1, &srcl);
    const char *p = luaL_checklstring(L, 2, &lp);
    int tr = lua_type(L, 3);
    lua_Integer max_s = luaL_optinteger(L, 4, (lua_Integer)srcl + 1);
    luaL_argcheck(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                  "string/function/table expected");
    lp = strlen(p);
    int anchor = *p == '^';
    if (anchor) p++, lp--;
    mstate ms;
    ms_init(&ms, L, src, srcl, p, lp);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer n = 0;
    while (n < max_s) {
        ms.level = 0;
        ms.depth = MAX_DEPTH;
        const char *e = match(&ms, src, p);
        if (e) {
            n++;
            add_value(&ms, &b, src, e);
        }
        if (e && e > src) {
            src = e;
        } else if (src < ms.src_end) {
            step(&ms);
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        if (anchor) break;
    }
    luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}

void sk_lua_open_patterns(lua_State *L, int string_table)
{
    static const luaL_Reg fns[] = {
        {"find", str_find}, {"match", str_match}, {"gmatch", str_gmatch}, {"gsub", str_gsub}, {NULL, NULL},
    };
    string_table = string_table < 0 ? lua_gettop(L) + string_table + 1 : string_table;
    for (int i = 0; fns[i].name; i++) {
        lua_pushcfunction(L, fns[i].func);
        lua_setfield(L, string_table, fns[i].name);
    }
}
