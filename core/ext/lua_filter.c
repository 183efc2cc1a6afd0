/*
 * lua_filter.c — per-route LuaJIT filters.
 *
 * A config generation keeps the source of every route script (read once at
 * load, where it is also run once in a scratch state to catch errors). Each
 * worker builds its own Lua state for the generation when it starts or
 * switches to it: one sandboxed environment per route, the module run once
 * in it (then its init(config, info), if any), the hooks kept in the registry. A request's hooks run in one
 * coroutine, taken from a small pool, with the request as a userdata `r`.
 *
 * Containment. The state's allocator refuses to grow past `lua_memory`
 * while a script runs; a count hook checks the clock every 1000 VM
 * instructions against the request's deadline. Hooks do not run inside
 * JIT-compiled traces, so the JIT is off in these states: every Lua
 * instruction goes through the interpreter, where the hook does run. The
 * pattern functions are lua_pattern.c's, whose matcher checks the budget
 * every 4096 steps; other long C library calls (table.sort or table.concat
 * of a huge table) are not interrupted, only counted once they return;
 * docs/lua.md has the measurements. Once a script is over its
 * budget or memory, every later hook raises again and the sandbox's
 * pcall/xpcall hand the error on, so a script cannot catch its way out.
 */
#include "lua_internal.h"
#include "metrics.h"

/* ---- memory and time ------------------------------------------------------------------ */

/* The clock budgets are counted on: monotonic time in the proxy, where a worker held
 * by a script is what the budget protects; this thread's CPU time in `sidekick lua-test`,
 * whose verdict must not depend on how busy the machine is. */
uint64_t sk__lua_vm_now(const sk_lua_vm *vm)
{
    if (!vm->cpu_clock) return sk_now_ns();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    sk_lua_vm *vm = ud;
    if (nsize == 0) {
        free(ptr);
        vm->mem -= osize;
        return NULL;
    }
    if (nsize > osize && vm->running) {
        if (vm->mem - osize + nsize > vm->limit) {
            vm->kill = KILL_MEMORY;
            return NULL;
        }
        /* A few huge steps (s = s .. s) run fewer instructions than the
         * hook's interval: large allocations check the deadline too. */
        if (nsize >= 65536 && (vm->kill == KILL_BUDGET || sk__lua_vm_now(vm) > vm->deadline)) {
            vm->kill = KILL_BUDGET;
            return NULL;
        }
    }
    void *p = realloc(ptr, nsize);
    if (p) vm->mem = vm->mem - osize + nsize;
    return p;
}

/* C stack a script may use below the host's frame: C functions that call back into Lua
 * (string.gsub, table.sort, coroutine.resume) nest C frames that LuaJIT does not limit;
 * gsub alone takes ~8 KiB per level, so a recursive callback ends a worker's 8 MiB stack
 * within ~1000 levels, long before any budget. Checked every HOOK_EVERY instructions. */
#define CSTACK_MAX ((ptrdiff_t)1 << 20)

/* Must the running script stop (past its deadline, or already stopped)? */
static bool must_stop(sk_lua_vm *vm)
{
    if (!vm->kill && sk__lua_vm_now(vm) > vm->deadline) vm->kill = KILL_BUDGET;
    return vm->kill != KILL_NONE;
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    sk_lua_vm *vm = vm_of(L);
    if (!vm->running) return;
    /* the frame address, not a local's: ASan may put locals on a fake stack */
    const char *here = __builtin_frame_address(0);
    if (vm->cstack && vm->cstack - here > CSTACK_MAX) luaL_error(L, "C stack overflow");
    if (!must_stop(vm)) return;
    const char *what = vm->kill == KILL_BUDGET ? "lua_budget exceeded" : "lua_memory exceeded";
    if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
        luaL_error(L, "%s:%d: %s", ar->short_src, ar->currentline, what);
    luaL_error(L, "%s", what);
}

bool sk_lua_over_budget(lua_State *L)
{
    void *ud;
    if (lua_getallocf(L, &ud) != vm_alloc) return false;
    sk_lua_vm *vm = ud;
    return vm->running && must_stop(vm);
}

static int l_killed(lua_State *L)
{
    lua_pushboolean(L, vm_of(L)->kill != KILL_NONE);
    return 1;
}

static int panic(lua_State *L)
{
    sk_error("lua: unprotected error: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    abort();
}

/* ---- reading files ---------------------------------------------------------------------- */

char *sk__lua_read_file(const char *path, size_t *len, char *err, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, n, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, used = 0;
    for (;;) {
        if (used == cap) {
            if (cap >= MAX_SRC) {
                snprintf(err, n, "%s: larger than %u bytes", path, MAX_SRC);
                goto fail;
            }
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                snprintf(err, n, "out of memory");
                goto fail;
            }
            buf = nb;
        }
        size_t got = fread(buf + used, 1, cap - used, f);
        used += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        snprintf(err, n, "cannot read %s: %s", path, strerror(errno));
        goto fail;
    }
    fclose(f);
    buf[used] = 0;
    *len = used;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

/* ---- the sandbox ------------------------------------------------------------------------- */

/* Base functions a script may use (pcall and xpcall are replaced below). */
static const char *const safe_base[] = {
    "assert", "error",    "ipairs", "next",   "pairs",        "select",       "tonumber", "tostring", "type",
    "unpack", "rawequal", "rawget", "rawset", "setmetatable", "getmetatable", "_VERSION", NULL,
};
/* Libraries copied into every environment (string without dump). */
static const char *const safe_libs[] = {"string", "table", "math", "bit", "coroutine", NULL};

/* pcall and xpcall that do not let a script swallow its budget or memory kill. */
static const char pcall_src[] = "local raw_pcall, raw_xpcall, killed, error = ...\n"
                                "local function pass(ok, ...)\n"
                                "  if not ok and killed() then error((...), 0) end\n"
                                "  return ok, ...\n"
                                "end\n"
                                "return function(f, ...) return pass(raw_pcall(f, ...)) end,\n"
                                "       function(f, h, ...) return pass(raw_xpcall(f, h, ...)) end\n";

static void open_lib(lua_State *L, lua_CFunction f, const char *name)
{
    lua_pushcfunction(L, f);
    lua_pushstring(L, name);
    lua_call(L, 1, 0);
}

/* Fills the registry table `proto` with what every environment gets. Host side. */
static void build_proto(sk_lua_vm *vm)
{
    lua_State *L = vm->L;
    open_lib(L, luaopen_base, "");
    open_lib(L, luaopen_string, LUA_STRLIBNAME);
    open_lib(L, luaopen_table, LUA_TABLIBNAME);
    open_lib(L, luaopen_math, LUA_MATHLIBNAME);
    open_lib(L, luaopen_bit, LUA_BITLIBNAME);
    lua_getglobal(L, "string"); /* pattern functions that stop at the budget */
    sk_lua_open_patterns(L, -1);
    lua_pop(L, 1);

    lua_newtable(L); /* proto */
    for (int i = 0; safe_base[i]; i++) {
        lua_getglobal(L, safe_base[i]);
        lua_setfield(L, -2, safe_base[i]);
    }
    for (int i = 0; safe_libs[i]; i++) {
        lua_getglobal(L, safe_libs[i]);
        lua_setfield(L, -2, safe_libs[i]);
    }
    if (luaL_loadbuffer(L, pcall_src, sizeof(pcall_src) - 1, "=sandbox") != 0) abort();
    lua_getglobal(L, "pcall");
    lua_getglobal(L, "xpcall");
    lua_pushcfunction(L, l_killed);
    lua_getglobal(L, "error");
    lua_call(L, 4, 2);
    lua_setfield(L, -3, "xpcall");
    lua_setfield(L, -2, "pcall");
    vm->proto = luaL_ref(L, LUA_REGISTRYINDEX);

    /* Every state its own random sequence (else each worker and each
     * generation would draw the same canary decisions). */
    uint32_t seed = 0;
    if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed)) seed = (uint32_t)sk_now_ns();
    lua_getglobal(L, "math");
    lua_getfield(L, -1, "randomseed");
    lua_pushnumber(L, (double)(seed & 0x7fffffff));
    lua_call(L, 1, 0);
    lua_pop(L, 1);

    /* Strings share one metatable whose __index is the real string table:
     * hide it, so that no script can change string methods for the others. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_getfield(L, -1, "__index"); /* the real string table: ("").dump must not work */
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 3);

    /* Nothing reaches the real globals any more; empty them anyway. */
    lua_pushvalue(L, LUA_GLOBALSINDEX);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, -4);
    }
    lua_pop(L, 1);
}

static void copy_table(lua_State *L, int src)
{
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, src)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

/* Is this a module name `require` accepts ("a.b_c", no "..", no "/")? */
static bool module_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 200 || s[0] == '.' || s[n - 1] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '-' || c == '.';
        if (!ok || (c == '.' && s[i + 1] == '.')) return false;
    }
    return true;
}

static const sk_lua_mod *find_mod(const sk_lua_gen *g, const char *path)
{
    for (const sk_lua_mod *m = g ? g->mods : NULL; m; m = m->next)
        if (strcmp(m->path, path) == 0) return m;
    return NULL;
}

static char loading_marker; /* loaded[name] while name's chunk runs */

/* require(name), upvalues: env, loaded, dir. Modules run in the caller's environment. */
static int sb_require(lua_State *L)
{
    sk_lua_vm *vm = vm_of(L);
    size_t n;
    const char *name = luaL_checklstring(L, 1, &n);
    if (!module_name_ok(name, n)) return luaL_error(L, "require: bad module name '%s'", name);
    lua_settop(L, 1);
    lua_pushvalue(L, 1);
    lua_rawget(L, lua_upvalueindex(2));
    if (lua_toboolean(L, -1)) {
        if (lua_islightuserdata(L, -1)) return luaL_error(L, "require: loop while loading '%s'", name);
        return 1;
    }
    lua_pop(L, 1);
    char path[4096];
    int pl = snprintf(path, sizeof(path), "%s/%s.lua", lua_tostring(L, lua_upvalueindex(3)), name);
    if (pl < 0 || (size_t)pl >= sizeof(path)) return luaL_error(L, "require: name too long");
    for (char *p = path + strlen(lua_tostring(L, lua_upvalueindex(3))) + 1; *p; p++)
        if (*p == '.' && strcmp(p, ".lua") != 0) *p = '/';

    const sk_lua_mod *m = find_mod(vm->gen, path);
    char err[512], chunk[4200];
    snprintf(chunk, sizeof(chunk), "@%s", path);
    int rc;
    if (m) {
        rc = luaL_loadbufferx(L, m->src, m->len, chunk, "t");
    } else {
        size_t len;
        char *src = sk__lua_read_file(path, &len, err, sizeof(err));
        if (!src) return luaL_error(L, "require '%s': %s", name, err);
        rc = luaL_loadbufferx(L, src, len, chunk, "t");
        if (rc == 0 && vm->recording && vm->gen) {
            sk_lua_mod *nm = calloc(1, sizeof(*nm));
            if (nm && (nm->path = strdup(path))) {
                nm->src = src;
                nm->len = len;
                nm->next = vm->gen->mods;
                vm->gen->mods = nm;
                src = NULL;
            } else {
                free(nm);
            }
        }
        free(src);
    }
    if (rc != 0) return lua_error(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_setfenv(L, -2);
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, &loading_marker);
    lua_rawset(L, lua_upvalueindex(2));
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -2);
    lua_rawset(L, lua_upvalueindex(2));
    return 1;
}

/* load(s [, name [, mode [, env]]]) and loadstring(s [, name]): source text only. */
static int sb_load(lua_State *L)
{
    size_t n;
    if (lua_type(L, 1) != LUA_TSTRING) {
        lua_pushnil(L);
        lua_pushliteral(L, "load: only source strings are accepted");
        return 2;
    }
    const char *s = lua_tolstring(L, 1, &n);
    const char *name = luaL_optstring(L, 2, "=(load)");
    if (luaL_loadbufferx(L, s, n, name, "t") != 0) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (lua_istable(L, 4))
        lua_pushvalue(L, 4);
    else
        lua_pushvalue(L, lua_upvalueindex(1));
    lua_setfenv(L, -2);
    return 1;
}

/* Appends the arguments from `first` on as text, separated by spaces. */
static void args_text(lua_State *L, int first, luaL_Buffer *b)
{
    int top = lua_gettop(L);
    for (int i = first; i <= top; i++) {
        if (i > first) luaL_addchar(b, ' ');
        switch (lua_type(L, i)) {
        case LUA_TSTRING:
        case LUA_TNUMBER: {
            size_t n;
            const char *s = lua_tolstring(L, i, &n);
            luaL_addlstring(b, s, n);
            break;
        }
        case LUA_TBOOLEAN: luaL_addstring(b, lua_toboolean(L, i) ? "true" : "false"); break;
        case LUA_TNIL: luaL_addstring(b, "nil"); break;
        default: {
            char t[64];
            snprintf(t, sizeof(t), "%s: %p", lua_typename(L, lua_type(L, i)), lua_topointer(L, i));
            luaL_addstring(b, t);
        }
        }
    }
}

/* Logs the arguments from `first` on, prefixed with the name in upvalue 1. */
static int log_args(lua_State *L, int level, int first)
{
    if (level > sk_log_level) return 0;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    args_text(L, first, &b);
    luaL_pushresult(&b);
    sk_log(level, "lua %s: %s", lua_tostring(L, lua_upvalueindex(1)), lua_tostring(L, -1));
    return 0;
}

/* sk.log(level, ...), upvalue: the route name. */
static int sk_log_fn(lua_State *L)
{
    static const char *const levels[] = {"error", "warn", "info", "debug", NULL};
    return log_args(L, luaL_checkoption(L, 1, NULL, levels), 2);
}

/* print(...): sk.log("info", ...), as scripts written for plain Lua expect it to work. */
static int print_fn(lua_State *L)
{
    return log_args(L, SK_LOG_INFO, 1);
}

static int sk_now_fn(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    return 1;
}

/*
 * Pushes a new environment: the shared safe functions, its own copies of
 * the libraries, `sk`, and load/loadstring/require bound to it. `who`
 * names it in sk.log lines; `dir` is where require looks.
 */
void sk__lua_new_env(sk_lua_vm *vm, const char *who, const char *dir)
{
    lua_State *L = vm->L;
    lua_createtable(L, 0, 32);
    int env = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->proto);
    int proto = env + 1;
    lua_pushnil(L);
    while (lua_next(L, proto)) {
        if (lua_istable(L, -1)) {
            int lib = lua_gettop(L);
            copy_table(L, lib);
            if (strcmp(lua_tostring(L, -3), "string") == 0) {
                lua_pushnil(L);
                lua_setfield(L, -2, "dump");
            }
            lua_replace(L, lib);
        }
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, env);
    }
    lua_pop(L, 1); /* proto */

    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");
    lua_pushvalue(L, env);
    lua_pushcclosure(L, sb_load, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, env, "load");
    lua_setfield(L, env, "loadstring");
    lua_pushvalue(L, env);
    lua_newtable(L);
    lua_pushstring(L, dir);
    lua_pushcclosure(L, sb_require, 3);
    lua_setfield(L, env, "require");

    lua_pushstring(L, who);
    lua_pushcclosure(L, print_fn, 1);
    lua_setfield(L, env, "print");
    lua_createtable(L, 0, 2);
    lua_pushstring(L, who);
    lua_pushcclosure(L, sk_log_fn, 1);
    lua_setfield(L, -2, "log");
    lua_pushcfunction(L, sk_now_fn);
    lua_setfield(L, -2, "now");
    lua_setfield(L, env, "sk");
}

/* ---- running code ------------------------------------------------------------------------ */

/* Calls the function below nargs on L as a script (capped memory, deadline
 * in ms), in a coroutine like a hook. Host side. 0 with nres results on L,
 * or LUA_ERRRUN with the message and traceback on L. */
int sk__lua_run_script(sk_lua_vm *vm, int nargs, int nres, uint64_t budget_ms)
{
    lua_State *L = vm->L;
    lua_State *co = lua_newthread(L);
    lua_insert(L, -(nargs + 2)); /* below the function: it anchors the coroutine */
    lua_xmove(L, co, nargs + 1);
    int kill;
    int rc = sk__lua_resume_script(vm, co, nargs, sk__lua_vm_now(vm) + budget_ms * 1000000ull, &kill);
    if (rc == 0 && !kill) {
        lua_settop(co, nres);
        lua_xmove(co, L, nres);
    } else {
        sk__lua_push_failure(L, co, rc, kill);
        rc = LUA_ERRRUN;
    }
    lua_remove(L, -(rc == 0 ? nres : 1) - 1); /* the coroutine, below the results or the message */
    return rc;
}

/*
 * Runs a route script's source in a new environment and pushes the module
 * table (checked: a table, hooks functions or absent). 0, or -1 with the
 * message in err. Host side.
 */
int sk__lua_instantiate(sk_lua_vm *vm, const char *who, const char *path, const char *src, size_t len,
                        const char *dir, char *err, size_t n)
{
    lua_State *L = vm->L;
    int top = lua_gettop(L);
    sk__lua_new_env(vm, who, dir);
    char chunk[4200];
    snprintf(chunk, sizeof(chunk), "@%s", path);
    if (luaL_loadbufferx(L, src, len, chunk, "t") != 0) {
        snprintf(err, n, "%s", lua_tostring(L, -1));
        lua_settop(L, top);
        return -1;
    }
    lua_pushvalue(L, top + 1);
    lua_setfenv(L, -2);
    if (sk__lua_run_script(vm, 0, 1, LOAD_BUDGET) != 0) {
        snprintf(err, n, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        lua_settop(L, top);
        return -1;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, n, "%s: the script must return a table of hooks (got %s)", path, luaL_typename(L, -1));
        lua_settop(L, top);
        return -1;
    }
    static const char *const hooks[] = {"on_request", "on_response", "init"};
    for (int i = 0; i < 3; i++) {
        lua_getfield(L, -1, hooks[i]);
        bool ok = lua_isnil(L, -1) || lua_isfunction(L, -1);
        lua_pop(L, 1);
        if (!ok) {
            snprintf(err, n, "%s: %s must be a function", path, hooks[i]);
            lua_settop(L, top);
            return -1;
        }
    }
    lua_remove(L, top + 1); /* the env: the hooks keep it */
    return 0;
}

/*
 * Calls the module's init(config, info) when it has one: the module table is
 * at `mod`, the config table at `cfg`, the info table at `info` (stack indices
 * of L). Runs as a script with the load budget, like the top level; the stack
 * is as before. 0, or -1 with "PATH: init: message" and the traceback in err.
 */
int sk__lua_run_init(sk_lua_vm *vm, const char *path, int mod, int cfg, int info, char *err, size_t n)
{
    lua_State *L = vm->L;
    lua_getfield(L, mod, "init");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pushvalue(L, cfg);
    lua_pushvalue(L, info);
    if (sk__lua_run_script(vm, 2, 0, LOAD_BUDGET) != 0) {
        snprintf(err, n, "%s: init: %s", path, lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

sk_lua_vm *sk__lua_vm_new(size_t limit, const char *dir)
{
    sk_lua_vm *vm = calloc(1, sizeof(*vm));
    if (!vm) return NULL;
    vm->limit = limit;
    vm->dir = dir;
    vm->L = lua_newstate(vm_alloc, vm);
    if (!vm->L) {
        free(vm);
        return NULL;
    }
    lua_State *L = vm->L;
    lua_atpanic(L, panic);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
    build_proto(vm);
    lua_newtable(L);
    vm->anchors = luaL_ref(L, LUA_REGISTRYINDEX);
    return vm;
}

void sk__lua_vm_free(sk_lua_vm *vm)
{
    if (!vm) return;
    lua_close(vm->L);
    free(vm->hook_ref);
    free(vm->config_ref);
    free(vm);
}

/* ---- generations and worker states ------------------------------------------------------ */

/* Builds the routes of cfg into vm: hook functions (the module's state
 * stays reachable through them) and r:config() tables. */
static int load_routes(sk_lua_vm *vm, sk_config *cfg, int *bad_route, char *err, size_t n)
{
    lua_State *L = vm->L;
    vm->hook_ref = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof(*vm->hook_ref));
    vm->config_ref = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof(int));
    if (!vm->hook_ref || !vm->config_ref) {
        snprintf(err, n, "out of memory");
        return -1;
    }
    luaL_newmetatable(L, "sidekick.request");
    lua_newtable(L);
    luaL_register(L, NULL, sk__lua_req_methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "sidekick.request");
    lua_setfield(L, -2, "__metatable");
    vm->req_mt = luaL_ref(L, LUA_REGISTRYINDEX);

    /* init's second argument: { route = NAME, clusters = { [NAME] = true, ... } },
     * fresh tables per route, so that no init can change what another sees. */
    lua_createtable(L, 0, (int)cfg->nclusters);
    for (size_t k = 0; k < cfg->nclusters; k++) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, cfg->clusters[k]->name);
    }
    int clusters = lua_gettop(L);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        sk_route *rt = cfg->routes[i];
        if (!rt->lua) continue;
        lua_createtable(L, 0, (int)rt->nlua_keys); /* r:config(), also init's config */
        for (size_t k = 0; k < rt->nlua_keys; k++) {
            lua_pushstring(L, rt->lua_keys[k].value);
            lua_setfield(L, -2, rt->lua_keys[k].key);
        }
        int cfg_t = lua_gettop(L);
        lua_createtable(L, 0, 2);
        lua_pushstring(L, rt->name);
        lua_setfield(L, -2, "route");
        copy_table(L, clusters);
        lua_setfield(L, -2, "clusters");
        char who[300];
        snprintf(who, sizeof(who), "route %s", rt->name);
        if (sk__lua_instantiate(vm, who, rt->lua, rt->lua_src, rt->lua_src_len, cfg->lua_dir, err, n) < 0 ||
            sk__lua_run_init(vm, rt->lua, cfg_t + 2, cfg_t, cfg_t + 1, err, n) < 0) {
            *bad_route = (int)i;
            lua_settop(L, clusters - 1);
            return -1;
        }
        static const char *const names[] = {"on_request", "on_response"};
        for (int h = 0; h < 2; h++) {
            lua_getfield(L, -1, names[h]);
            if (lua_isfunction(L, -1))
                vm->hook_ref[i][h] = luaL_ref(L, LUA_REGISTRYINDEX);
            else
                lua_pop(L, 1);
        }
        lua_pop(L, 2); /* the module table, the info table */
        vm->config_ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pop(L, 1); /* clusters */
    return 0;
}

int sk_lua_load_config(sk_config *c, int *bad_route, char *err, size_t err_size)
{
    *bad_route = -1;
    bool any = false;
    for (size_t i = 0; i < c->nroutes; i++) {
        sk_route *rt = c->routes[i];
        if (!rt->lua) continue;
        any = true;
        if (!(rt->lua_src = sk__lua_read_file(rt->lua, &rt->lua_src_len, err, err_size))) {
            *bad_route = (int)i;
            return -1;
        }
    }
    if (!any) return 0;
    sk_lua_gen *g = calloc(1, sizeof(*g));
    if (!g || !(g->vms = calloc((size_t)c->workers, sizeof(*g->vms)))) {
        free(g);
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    g->cfg = c;
    g->nworkers = c->workers;
    c->lua = g;
    /* The check: every script run once, as a worker will run it. */
    sk_lua_vm *vm = sk__lua_vm_new(c->lua_memory, c->lua_dir);
    if (!vm) {
        snprintf(err, err_size, "cannot create a Lua state");
        return -1;
    }
    vm->gen = g;
    vm->recording = true;
    int rc = load_routes(vm, c, bad_route, err, err_size);
    sk__lua_vm_free(vm);
    return rc;
}

void sk_lua_gen_free(sk_lua_gen *g)
{
    if (!g) return;
    for (int i = 0; i < g->nworkers; i++) sk__lua_vm_free(g->vms[i]);
    free(g->vms);
    while (g->mods) {
        sk_lua_mod *m = g->mods;
        g->mods = m->next;
        free(m->path);
        free(m->src);
        free(m);
    }
    free(g);
}

/* Worker `id`'s state for generation c, built on first use. */
static sk_lua_vm *vm_for(sk_config *c, int id)
{
    sk_lua_gen *g = c->lua;
    if (!g || id >= g->nworkers) return NULL;
    sk_lua_vm *vm = g->vms[id];
    if (vm) return vm->broken ? NULL : vm;
    vm = sk__lua_vm_new(c->lua_memory, c->lua_dir);
    if (!vm) {
        sk_error("lua: cannot create the Lua state of worker %d", id);
        return NULL;
    }
    vm->gen = g;
    g->vms[id] = vm;
    char err[2048];
    int bad = -1;
    if (load_routes(vm, c, &bad, err, sizeof(err)) < 0) {
        sk_error("lua: worker %d: %s", id, err);
        vm->broken = true;
        return NULL;
    }
    return vm;
}

/* An idle coroutine, or a new one (anchored in vm->anchors); NULL on OOM. */
static lua_State *take_coroutine(sk_lua_vm *vm)
{
    if (vm->nidle) return vm->idle[--vm->nidle];
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->anchors);
    lua_State *co = lua_newthread(L);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return co;
}

/* A request's coroutine once the request is over: kept for the next request
 * when it finished cleanly, else (suspended in r:respond(), failed) let go. */
static void give_back(sk_lua_vm *vm, lua_State *co, bool reusable)
{
    if (reusable && vm->nidle < POOL_MAX) {
        vm->idle[vm->nidle++] = co;
        return;
    }
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->anchors);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* Moves co's error message onto L; when the script was stopped (budget,
 * memory) but the error says something else ("not enough memory" from a
 * refused allocation), says why first. */
static void kill_message(lua_State *L, lua_State *co, int kill)
{
    lua_xmove(co, L, 1);
    const char *m = lua_tostring(L, -1);
    const char *why = kill == KILL_BUDGET   ? "lua_budget exceeded"
                      : kill == KILL_MEMORY ? "lua_memory exceeded"
                                            : NULL;
    if (why && (!m || !strstr(m, why))) {
        lua_pushfstring(L, "%s (%s)", why, m ? m : "error");
        lua_remove(L, -2);
    }
}

/*
 * Resumes co (function and nargs on its stack) as a script until `deadline`:
 * the memory cap and the budget apply. Returns lua_resume's status and sets
 * *kill to why the script was stopped (KILL_NONE when it was not). Restores
 * the state's previous run state (a test file running a hook).
 */
int sk__lua_resume_script(sk_lua_vm *vm, lua_State *co, int nargs, uint64_t deadline, int *kill)
{
    bool was = vm->running;
    uint64_t old_deadline = vm->deadline;
    int old_kill = vm->kill;
    const char *old_cstack = vm->cstack;
    vm->running = true;
    vm->deadline = deadline;
    vm->kill = KILL_NONE;
    vm->cstack = __builtin_frame_address(0);
    int rc = lua_resume(co, nargs);
    /* Time spent in a long C call that checks no budget (table.sort) is not
     * interrupted: a hook that returns past its deadline still fails. */
    if (rc == 0 || rc == LUA_YIELD) must_stop(vm);
    *kill = vm->kill;
    vm->running = was;
    vm->deadline = old_deadline;
    vm->kill = old_kill;
    vm->cstack = old_cstack;
    if (*kill == KILL_MEMORY) lua_gc(vm->L, LUA_GCCOLLECT, 0); /* free what the failed script built */
    return rc;
}

/* Pushes onto L why co failed, with its traceback. */
void sk__lua_push_failure(lua_State *L, lua_State *co, int rc, int kill)
{
    if (rc == 0 || rc == LUA_YIELD)
        lua_pushstring(L, kill == KILL_BUDGET   ? "lua_budget exceeded"
                          : kill == KILL_MEMORY ? "lua_memory exceeded"
                                                : "coroutine.yield() is not allowed at the top of a hook");
    else
        kill_message(L, co, kill);
    const char *msg = lua_tostring(L, -1);
    luaL_traceback(L, co, msg ? msg : "(error object is not a string)", 0);
    lua_remove(L, -2);
}

/* Counts a failure of the route's filter in the worker's row of the route
 * (obs/metrics.h): it goes on across reloads that keep the route. */
static void count_error(sk_request *r, int kind)
{
    sk_metrics_count(r->worker->metrics, r->route->metrics_row, SK_MC_LUA_ERROR + kind);
}

void sk_lua_worker_prepare(sk_config *c, int worker_id)
{
    if (c->lua) vm_for(c, worker_id);
}

static sk_status run_hook(sk_request *r, int hook)
{
    static const char *const names[] = {"on_request", "on_response"};
    const sk_route *rt = r->route;
    sk_lua_vm *vm = vm_for(r->config, r->worker->id);
    if (!vm) {
        count_error(r, ERR_ERROR);
        return SK_ERROR;
    }
    if (!vm->hook_ref[rt->index][hook]) return SK_CONTINUE;
    lua_State *L = vm->L;
    /* One coroutine per request, for both hooks: the request object sits in
     * its first stack slot between them. */
    lua_State *co = r->lua_co;
    lreq *q = r->lua_q;
    if (!co) {
        co = take_coroutine(vm);
        q = lua_newuserdata(co, sizeof(*q));
        q->magic = REQ_MAGIC;
        q->r = r;
        lua_rawgeti(co, LUA_REGISTRYINDEX, vm->req_mt);
        lua_setmetatable(co, -2);
        r->lua_co = co;
        r->lua_q = q;
    } else if (lua_status(co) != 0) { /* not reached: no hook runs after a failed or replying one */
        count_error(r, ERR_ERROR);
        return SK_ERROR;
    }
    lua_rawgeti(co, LUA_REGISTRYINDEX, vm->hook_ref[rt->index][hook]);
    lua_pushvalue(co, 1);
    q->phase = hook;
    q->responded = false;

    uint64_t budget = rt->lua_budget_ms * 1000000ull, t0 = sk_now_ns();
    int kill;
    int rc = sk__lua_resume_script(vm, co, 1, t0 + (budget > r->lua_ns ? budget - r->lua_ns : 0), &kill);
    uint64_t spent = sk_now_ns() - t0;
    r->lua_ns += spent;
    if (spent > 1000000) ev_now_update(r->worker->loop); /* timers armed next must not start in the past */
    if (rc == 0 && !kill) {
        lua_settop(co, 1); /* the request object stays for the next hook */
        return q->responded ? SK_RESPOND : SK_CONTINUE;
    }
    if (rc == LUA_YIELD && q->responded && !kill)
        return SK_RESPOND; /* r:respond() ended the hook; the coroutine is let go with the request */
    sk__lua_push_failure(L, co, rc, kill);
    sk_warn("lua route %s: %s: %s", rt->name, names[hook], lua_tostring(L, -1));
    lua_pop(L, 1);
    count_error(r, kill == KILL_BUDGET ? ERR_BUDGET : kill == KILL_MEMORY ? ERR_MEMORY : ERR_ERROR);
    return SK_ERROR;
}

sk_status sk_lua_on_request(sk_request *r)
{
    return run_hook(r, HOOK_REQUEST);
}

sk_status sk_lua_on_response(sk_request *r)
{
    return run_hook(r, HOOK_RESPONSE);
}

void sk_lua_request_done(sk_request *r)
{
    sk_lua_gen *g = r->config ? r->config->lua : NULL;
    sk_lua_vm *vm = g && r->worker->id < g->nworkers ? g->vms[r->worker->id] : NULL;
    lreq *q = r->lua_q;
    lua_State *co = r->lua_co;
    if (q) q->r = NULL; /* a script that kept `r` gets "the request is over" */
    if (vm && co) {
        bool reusable = lua_status(co) == 0;
        if (reusable) lua_settop(co, 0);
        give_back(vm, co, reusable);
    }
    r->lua_co = NULL;
    r->lua_q = NULL;
}
