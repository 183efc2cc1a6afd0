/*
 * lua_request.c — the request object `r` of Lua filters: reading and
 * editing the request and response through the plugin host table, the
 * per-request ctx table, metadata, the cluster choice and local replies.
 */
#include "lua_internal.h"

/* ---- the request object ----------------------------------------------------------------- */

static lreq *check_req(lua_State *L)
{
    lreq *q = lua_type(L, 1) == LUA_TUSERDATA ? lua_touserdata(L, 1) : NULL;
    if (!q || q->magic != REQ_MAGIC) luaL_error(L, "expected the request object (call methods with ':')");
    if (!q->r) luaL_error(L, "the request is over");
    return q;
}

static sk_req *R(lreq *q)
{
    return (sk_req *)q->r;
}

/* A string argument without NUL bytes. */
static const char *check_text(lua_State *L, int i)
{
    size_t n;
    const char *s = luaL_checklstring(L, i, &n);
    if (strlen(s) != n) luaL_argerror(L, i, "contains a NUL byte");
    return s;
}

static int push_str(lua_State *L, sk_str s)
{
    if (s.ptr)
        lua_pushlstring(L, s.ptr, s.len);
    else
        lua_pushnil(L);
    return 1;
}

static void need_phase(lua_State *L, lreq *q, int phase, const char *fn)
{
    if (q->phase != phase)
        luaL_error(L, "r:%s() is only allowed in %s", fn,
                   phase == HOOK_REQUEST ? "on_request" : "on_response");
}

static int r_method(lua_State *L)
{
    return push_str(L, sk_host.method(R(check_req(L))));
}
static int r_path(lua_State *L)
{
    lreq *q = check_req(L);
    if (q->r->up_path) {
        lua_pushlstring(L, q->r->up_path, q->r->up_path_len);
        return 1;
    }
    return push_str(L, sk_host.path(R(q)));
}
static int r_query(lua_State *L)
{
    return push_str(L, sk_host.query(R(check_req(L))));
}
static int r_host(lua_State *L)
{
    return push_str(L, sk_host.authority(R(check_req(L))));
}
static int r_client_ip(lua_State *L)
{
    return push_str(L, sk_host.client_ip(R(check_req(L))));
}
static int r_identity(lua_State *L)
{
    return push_str(L, sk_host.identity(R(check_req(L))));
}
static int r_route(lua_State *L)
{
    return push_str(L, sk_host.route(R(check_req(L))));
}

static int r_set_path(lua_State *L)
{
    lreq *q = check_req(L);
    need_phase(L, q, HOOK_REQUEST, "set_path");
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    if (n == 0 || p[0] != '/') luaL_argerror(L, 2, "must start with '/'");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c == 0x7f || c == '?' || c == '#') luaL_argerror(L, 2, "bad character in path");
    }
    char *copy = sk_arena_strndup(&q->r->arena, p, n);
    if (!copy) luaL_error(L, "out of memory");
    q->r->up_path = copy;
    q->r->up_path_len = n;
    return 0;
}

static int r_header(lua_State *L)
{
    lreq *q = check_req(L);
    sk_str v;
    if (!sk_host.header(R(q), check_text(L, 2), &v)) {
        lua_pushnil(L);
        return 1;
    }
    return push_str(L, v);
}

/* Pushes a table of headers: lower-case name → value, repeats joined with ", ". */
static int push_headers(lua_State *L, const sk_head *h)
{
    lua_createtable(L, 0, (int)h->nhdrs);
    char name[256];
    for (size_t i = 0; i < h->nhdrs; i++) {
        const sk_header *x = &h->views[i];
        size_t nl = x->name_len < sizeof(name) ? x->name_len : sizeof(name) - 1;
        for (size_t j = 0; j < nl; j++) {
            char c = x->name[j];
            name[j] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
        }
        lua_pushlstring(L, name, nl);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, x->value, x->value_len);
        } else {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, x->value, x->value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
    return 1;
}

static int r_headers(lua_State *L)
{
    return push_headers(L, &check_req(L)->r->head);
}

static int edit_result(lua_State *L, int rc, const char *fn)
{
    if (rc < 0) luaL_error(L, "r:%s(): bad header name or value, or the request already went upstream", fn);
    return 0;
}

static int r_set_header(lua_State *L)
{
    lreq *q = check_req(L);
    need_phase(L, q, HOOK_REQUEST, "set_header");
    return edit_result(L, sk_host.set_header(R(q), check_text(L, 2), check_text(L, 3)), "set_header");
}
static int r_add_header(lua_State *L)
{
    lreq *q = check_req(L);
    need_phase(L, q, HOOK_REQUEST, "add_header");
    return edit_result(L, sk_host.add_header(R(q), check_text(L, 2), check_text(L, 3)), "add_header");
}
static int r_remove_header(lua_State *L)
{
    lreq *q = check_req(L);
    need_phase(L, q, HOOK_REQUEST, "remove_header");
    return edit_result(L, sk_host.remove_header(R(q), check_text(L, 2)), "remove_header");
}

static int r_meta(lua_State *L)
{
    lreq *q = check_req(L);
    const char *v = sk_host.meta(R(q), check_text(L, 2));
    if (!v) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, v);
    return 1;
}
static int r_set_meta(lua_State *L)
{
    lreq *q = check_req(L);
    if (sk_host.set_meta(R(q), check_text(L, 2), check_text(L, 3)) < 0) luaL_error(L, "out of memory");
    return 0;
}

/* A request object starts with the (empty) globals table as its env; the
 * first r:ctx() gives it a table of its own. */
static int r_ctx(lua_State *L)
{
    check_req(L);
    lua_getfenv(L, 1);
    if (lua_rawequal(L, -1, LUA_GLOBALSINDEX)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfenv(L, 1);
    }
    return 1;
}

static int r_config(lua_State *L)
{
    lreq *q = check_req(L);
    sk_lua_vm *vm = vm_of(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->config_ref[q->r->route->index]);
    return 1;
}

static int r_set_cluster(lua_State *L)
{
    lreq *q = check_req(L);
    need_phase(L, q, HOOK_REQUEST, "set_cluster");
    const char *name = check_text(L, 2);
    if (sk_host.set_cluster(R(q), name) < 0) luaL_error(L, "r:set_cluster(): unknown cluster '%s'", name);
    return 0;
}

/* Is s (n bytes) a reason for r:respond(): 1..64 of [a-z0-9_]? */
static bool reason_ok(const char *s, size_t n)
{
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_')) return false;
    return true;
}

/* r:respond(status [, body [, headers [, reason]]]): the local reply, then the hook ends. */
static int r_respond(lua_State *L)
{
    lreq *q = check_req(L);
    int status = (int)luaL_checkinteger(L, 2);
    size_t blen = 0, rlen = 0;
    const char *body = luaL_optlstring(L, 3, NULL, &blen);
    const char *reason = NULL;
    if (!lua_isnoneornil(L, 5)) {
        if (lua_type(L, 5) == LUA_TSTRING) reason = lua_tolstring(L, 5, &rlen);
        if (!reason || !reason_ok(reason, rlen))
            luaL_error(L, "bad argument #4 to 'respond' (reason must be 1..64 characters of [a-z0-9_])");
    }
    const char *hs[2 * MAX_RESP_HDRS + 1];
    size_t n = 0;
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "r:respond(): headers must be a table of name = value strings");
            if (n == 2 * MAX_RESP_HDRS) luaL_error(L, "r:respond(): more than %d headers", MAX_RESP_HDRS);
            hs[n++] = lua_tostring(L, -2);
            hs[n++] = lua_tostring(L, -1);
            lua_pop(L, 1);
        }
    }
    hs[n] = NULL;
    if (status < 200 || status > 599) luaL_argerror(L, 2, "status must be 200..599");
    if (sk_host.respond(R(q), status, reason, body, blen, n ? hs : NULL) < 0)
        luaL_error(L, "r:respond(): bad header name or value, or the response already started");
    q->responded = true;
    return lua_yield(L, 0); /* the hook ends here */
}

static int r_status(lua_State *L)
{
    lua_pushinteger(L, sk_host.status(R(check_req(L))));
    return 1;
}
static int r_response_header(lua_State *L)
{
    lreq *q = check_req(L);
    sk_str v;
    if (!sk_host.response_header(R(q), check_text(L, 2), &v)) {
        lua_pushnil(L);
        return 1;
    }
    return push_str(L, v);
}
static int r_set_response_header(lua_State *L)
{
    lreq *q = check_req(L);
    need_phase(L, q, HOOK_RESPONSE, "set_response_header");
    return edit_result(L, sk_host.set_response_header(R(q), check_text(L, 2), check_text(L, 3)),
                       "set_response_header");
}
static int r_add_response_header(lua_State *L)
{
    lreq *q = check_req(L);
    need_phase(L, q, HOOK_RESPONSE, "add_response_header");
    return edit_result(L, sk_host.add_response_header(R(q), check_text(L, 2), check_text(L, 3)),
                       "add_response_header");
}
static int r_remove_response_header(lua_State *L)
{
    lreq *q = check_req(L);
    need_phase(L, q, HOOK_RESPONSE, "remove_response_header");
    return edit_result(L, sk_host.remove_response_header(R(q), check_text(L, 2)), "remove_response_header");
}

const luaL_Reg sk__lua_req_methods[] = {
    {"method", r_method},
    {"path", r_path},
    {"set_path", r_set_path},
    {"query", r_query},
    {"host", r_host},
    {"header", r_header},
    {"headers", r_headers},
    {"set_header", r_set_header},
    {"add_header", r_add_header},
    {"remove_header", r_remove_header},
    {"client_ip", r_client_ip},
    {"identity", r_identity},
    {"route", r_route},
    {"meta", r_meta},
    {"set_meta", r_set_meta},
    {"ctx", r_ctx},
    {"config", r_config},
    {"set_cluster", r_set_cluster},
    {"respond", r_respond},
    {"status", r_status},
    {"response_header", r_response_header},
    {"set_response_header", r_set_response_header},
    {"add_response_header", r_add_response_header},
    {"remove_response_header", r_remove_response_header},
    {NULL, NULL},
};
