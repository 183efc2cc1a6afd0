/*
 * lua_internal.h — what the files of the Lua host share (lua_filter.c: the
 * states, sandbox, budgets and hooks; lua_request.c: the request object;
 * lua_offline.c: `sidekick lua-test`). Not used outside ext/.
 */
#ifndef SK_LUA_INTERNAL_H
#define SK_LUA_INTERNAL_H

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "head.h"
#include "lua_filter.h"
#include "plugin_host.h"
#include "request.h"

#define REQ_MAGIC     0x534b5251u /* "SKRQ" */
#define HOOK_EVERY    1000        /* VM instructions between budget checks */
#define LOAD_BUDGET   1000        /* ms for a module's top level */
#define POOL_MAX      64          /* idle coroutines kept per state */
#define MAX_SRC       (16u << 20) /* largest script or module file */
#define MAX_RESP_HDRS 64          /* headers of r:respond() */

enum { KILL_NONE = 0, KILL_BUDGET, KILL_MEMORY };
enum { ERR_ERROR = 0, ERR_BUDGET = 1, ERR_MEMORY = 2 };
enum { HOOK_REQUEST = 0, HOOK_RESPONSE = 1 };

/* A module source read at load (for `require` in worker states). */
typedef struct sk_lua_mod {
    struct sk_lua_mod *next;
    char *path; /* absolute file name */
    char *src;
    size_t len;
} sk_lua_mod;

/* One Lua state. */
typedef struct sk_lua_vm {
    lua_State *L;
    sk_lua_gen *gen;           /* NULL in the test runner */
    const char *dir;           /* lua_dir: where `require` looks */
    size_t mem, limit;         /* bytes allocated, and the cap while a script runs */
    bool running;              /* a script runs: the cap and the budget apply */
    bool recording;            /* load-time check: record `require`d sources in gen */
    int kill;                  /* KILL_*: why the running script must stop */
    uint64_t deadline;         /* vm_now() limit of the running script */
    bool cpu_clock;            /* budgets count this thread's CPU time (the test runner) */
    int (*hook_ref)[2];        /* per route index: registry refs of on_request / on_response, or 0 */
    int *config_ref;           /* per route index: registry ref of its r:config() table */
    int req_mt;                /* registry ref: metatable of request objects */
    int anchors;               /* registry ref: coroutines in use or idle (thread → true) */
    int proto;                 /* registry ref: the sandbox's shared values */
    lua_State *idle[POOL_MAX]; /* idle coroutines, ready for the next hook */
    int nidle;                 /* their number */
    bool broken;               /* the worker state could not be built */
    const char *cstack;        /* frame address of the C function that started the script */
} sk_lua_vm;

struct sk_lua_gen {
    sk_config *cfg;   /* owner (not a reference) */
    int nworkers;     /* size of vms */
    sk_lua_vm **vms;  /* per worker, built by that worker on first use */
    sk_lua_mod *mods; /* sources of modules required at load */
};

/* The request object's userdata. */
typedef struct lreq {
    uint32_t magic;
    int phase;      /* HOOK_* running */
    bool responded; /* r:respond() was called in this hook */
    sk_request *r;  /* NULL once the request is over */
} lreq;

/* The state a Lua thread belongs to (its allocator's user data). */
static inline sk_lua_vm *vm_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

/* --- lua_filter.c --- */
/* Builds the sandboxed environment of a script (`who` names it in messages,
 * `dir` is where require looks) and leaves it on the stack. */
void sk__lua_new_env(sk_lua_vm *vm, const char *who, const char *dir);
/* Runs the function below nargs as a script (memory cap, budget in ms) in
 * a coroutine: 0 with nres results, or LUA_ERRRUN with the message and
 * traceback on the stack. */
int sk__lua_run_script(sk_lua_vm *vm, int nargs, int nres, uint64_t budget_ms);
/* A new Lua state with the sandbox prototype, memory cap `limit`; NULL on OOM. */
sk_lua_vm *sk__lua_vm_new(size_t limit, const char *dir);
void sk__lua_vm_free(sk_lua_vm *vm);
/* Reads a whole file (at most MAX_SRC bytes); NULL with err. The caller frees. */
char *sk__lua_read_file(const char *path, size_t *len, char *err, size_t n);
/* Runs a route script in a new environment and pushes its module table
 * (checked). 0, or -1 with err. */
int sk__lua_instantiate(sk_lua_vm *vm, const char *who, const char *path, const char *src, size_t len,
                        const char *dir, char *err, size_t n);
/* Runs the module's init(config, info) if it has one. 0, or -1 with err. */
int sk__lua_run_init(sk_lua_vm *vm, const char *path, int mod, int cfg, int info, char *err, size_t n);
/* Resumes coroutine co until deadline (vm clock): a lua_resume result;
 * *kill says why a stopped script was stopped (KILL_*). */
int sk__lua_resume_script(sk_lua_vm *vm, lua_State *co, int nargs, uint64_t deadline, int *kill);
/* Pushes onto L the message of a failed resume of co, with its traceback. */
void sk__lua_push_failure(lua_State *L, lua_State *co, int rc, int kill);
/* The state's clock in ns: monotonic, or this thread's CPU time in the test runner. */
uint64_t sk__lua_vm_now(const sk_lua_vm *vm);

/* --- lua_request.c --- */
/* The methods of request objects. */
extern const luaL_Reg sk__lua_req_methods[];

#endif
