/*
 * lua_offline.c — `sidekick lua-test FILE...`: runs filter tests offline,
 * in the same sandbox as the proxy, with the Lua test library compiled in
 * (lua_test.lua) and budgets counted in CPU time.
 */
#include "lua_internal.h"

/* ---- the offline test runner ------------------------------------------------------------- */

#include "lua_test_src.h" /* sk_lua_test_src: core/ext/lua_test.lua */

/* Directory part of path ("." when none), malloc'd. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* load_filter(path, config, info): the module table of a filter file, in its own env,
 * after its init(config, info) if it has one. */
static int t_load_filter(lua_State *L)
{
    sk_lua_vm *vm = vm_of(L);
    const char *rel = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    char path[4096];
    if (rel[0] == '/')
        snprintf(path, sizeof(path), "%s", rel);
    else
        snprintf(path, sizeof(path), "%s/%s", lua_tostring(L, lua_upvalueindex(1)), rel);
    char err[2048];
    size_t len;
    char *src = sk__lua_read_file(path, &len, err, sizeof(err));
    if (!src) return luaL_error(L, "%s", err);
    char *dir = dir_of(path);
    bool was = vm->running;
    vm->running = false; /* instantiate runs the top level as a script itself */
    /* instantiate works on the state's main stack; L is the test file's coroutine */
    int top = lua_gettop(vm->L);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_xmove(L, vm->L, 2);
    int rc = dir ? sk__lua_instantiate(vm, rel, path, src, len, dir, err, sizeof(err)) : -1;
    if (rc == 0) rc = sk__lua_run_init(vm, path, top + 3, top + 1, top + 2, err, sizeof(err));
    vm->running = was;
    free(src);
    free(dir);
    if (rc < 0) {
        lua_settop(vm->L, top);
        return luaL_error(L, "%s", err);
    }
    lua_xmove(vm->L, L, 1);
    lua_settop(vm->L, top);
    return 1;
}

/* run(fn, r, budget_ms): fn(r) in a new coroutine. Returns "ok" | "yield" | "error", message. */
static int t_run(lua_State *L)
{
    sk_lua_vm *vm = vm_of(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    uint64_t budget = (uint64_t)luaL_optinteger(L, 3, 50);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_xmove(L, co, 2);
    int kill;
    int rc = sk__lua_resume_script(vm, co, 1, sk__lua_vm_now(vm) + budget * 1000000ull, &kill);
    if (rc == 0 && !kill) {
        lua_pushliteral(L, "ok");
        return 1;
    }
    if (rc == LUA_YIELD && !kill) {
        lua_pushliteral(L, "yield");
        return 1;
    }
    lua_pushliteral(L, "error");
    sk__lua_push_failure(L, co, rc, kill);
    return 2;
}

static int t_out(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    fwrite(s, 1, n, stdout);
    fflush(stdout);
    return 0;
}

/* Runs one test file; returns the number of failures (1 if it does not load). */
static int run_test_file(const char *file)
{
    char *dir = dir_of(file);
    sk_lua_vm *vm = dir ? sk__lua_vm_new(256u << 20, dir) : NULL;
    if (!vm) {
        fprintf(stderr, "lua-test: out of memory\n");
        free(dir);
        return 1;
    }
    vm->cpu_clock = true;
    lua_State *L = vm->L;
    int failed = 1;
    printf("# %s\n", file);
    fflush(stdout);
    /* The library, with the privileged helpers it alone sees. */
    if (luaL_loadbuffer(L, sk_lua_test_src, sizeof(sk_lua_test_src) - 1, "=lua_test") != 0) {
        fprintf(stderr, "lua-test: %s\n", lua_tostring(L, -1));
        goto out;
    }
    lua_createtable(L, 0, 4);
    lua_pushstring(L, dir);
    lua_pushcclosure(L, t_load_filter, 1);
    lua_setfield(L, -2, "load_filter");
    lua_pushcfunction(L, t_run);
    lua_setfield(L, -2, "run");
    lua_pushcfunction(L, t_out);
    lua_setfield(L, -2, "out");
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->proto);
    lua_setfield(L, -2, "base");
    /* The library's own environment: the sandbox too, plus the helpers. */
    sk__lua_new_env(vm, "lua-test", dir);
    lua_setfenv(L, -3);
    if (lua_pcall(L, 1, 2, 0) != 0) {
        fprintf(stderr, "lua-test: %s\n", lua_tostring(L, -1));
        goto out;
    }
    int finish = lua_gettop(L), T = finish - 1;
    /* The test file, in a sandbox environment with T. */
    char err[2048];
    size_t len;
    char *src = sk__lua_read_file(file, &len, err, sizeof(err));
    if (!src) {
        fprintf(stderr, "lua-test: %s\n", err);
        goto out;
    }
    char chunk[4200];
    snprintf(chunk, sizeof(chunk), "@%s", file);
    int rc = luaL_loadbufferx(L, src, len, chunk, "t");
    free(src);
    if (rc != 0) {
        printf("not ok - %s\n", lua_tostring(L, -1));
        goto out;
    }
    sk__lua_new_env(vm, "test", dir);
    lua_pushvalue(L, T);
    lua_setfield(L, -2, "T");
    lua_getfield(L, T, "print");
    lua_setfield(L, -2, "print");
    lua_setfenv(L, -2);
    if (sk__lua_run_script(vm, 0, 0, 60000) != 0) {
        printf("not ok - %s\n", lua_tostring(L, -1));
        fflush(stdout);
        lua_pop(L, 1);
        lua_pushvalue(L, finish);
        lua_pushboolean(L, 1);
    } else {
        lua_pushvalue(L, finish);
        lua_pushboolean(L, 0);
    }
    if (lua_pcall(L, 1, 1, 0) != 0) {
        fprintf(stderr, "lua-test: %s\n", lua_tostring(L, -1));
        goto out;
    }
    failed = (int)lua_tointeger(L, -1);
out:
    sk__lua_vm_free(vm);
    free(dir);
    return failed;
}

static void lua_test_usage(FILE *f)
{
    fprintf(f, "usage: sidekick lua-test [--] FILE_test.lua [FILE_test.lua...]\n"
               "Runs offline tests of Lua route filters (no config, proxy or network) and\n"
               "prints TAP-like results. Exit status: 0 when every case passed, 1 when one\n"
               "failed or a file did not load, 2 on a usage error. Docs: docs/lua.md\n"
               "(\"Testing filters offline\").\n");
}

int sk_lua_test_main(int argc, char **argv)
{
    int first = 0;
    for (; first < argc && argv[first][0] == '-' && argv[first][1]; first++) {
        if (strcmp(argv[first], "--") == 0) {
            first++;
            break;
        }
        if (strcmp(argv[first], "--help") == 0 || strcmp(argv[first], "-h") == 0) {
            lua_test_usage(stdout);
            return 0;
        }
        fprintf(stderr, "sidekick lua-test: unknown option '%s'\n", argv[first]);
        lua_test_usage(stderr);
        return 2;
    }
    if (first >= argc) {
        lua_test_usage(stderr);
        return 2;
    }
    int failed = 0;
    for (int i = first; i < argc; i++) failed += run_test_file(argv[i]);
    return failed ? 1 : 0;
}
