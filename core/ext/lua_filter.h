/*
 * lua_filter.h — per-route LuaJIT filters: the generation's scripts, one sandboxed
 * Lua state per worker, hooks run in a coroutine per request with a time
 * and memory budget, and the offline test runner (`sidekick lua-test`).
 */
#ifndef SK_LUA_FILTER_H
#define SK_LUA_FILTER_H

#include <sidekick/plugin.h>

#include "sk.h"

typedef struct sk_config sk_config;
typedef struct sk_request sk_request;
typedef struct sk_lua_gen sk_lua_gen;

/*
 * Reads every route script of `c` and runs it once in a scratch state (the
 * top level, then the module's init(config, info), each with a 1 s budget),
 * so that a syntax error, a failing top level or init, or a module that
 * returns no table fails the load. Keeps the sources
 * (and those of modules they `require`) in the generation: workers compile
 * exactly what was checked. Main thread. 0, or -1 with *bad_route set to the
 * route index (or -1) and the message in err.
 */
int sk_lua_load_config(sk_config *c, int *bad_route, char *err, size_t err_size);
/* Closes every worker state of the generation. Any thread, once nothing runs Lua of it. */
void sk_lua_gen_free(sk_lua_gen *g);

/* Builds worker `worker_id`'s Lua state for generation c now (its thread),
 * rather than at its first request. */
void sk_lua_worker_prepare(sk_config *c, int worker_id);

/* The route's on_request / on_response for r (worker thread). SK_CONTINUE,
 * SK_RESPOND (a reply is prepared in r->lr_*), or SK_ERROR (logged, counted). */
sk_status sk_lua_on_request(sk_request *r);
sk_status sk_lua_on_response(sk_request *r);
/* The request is over: its Lua object stops working and is released. */
void sk_lua_request_done(sk_request *r);

/* lua_pattern.c: replaces find, match, gmatch and gsub in the string table
 * at stack index `string_table` with versions that check the budget. */
struct lua_State;
void sk_lua_open_patterns(struct lua_State *L, int string_table);
/* Is the script running in L past its budget (then it is marked stopped)?
 * false for a state that is not a filter state. */
bool sk_lua_over_budget(struct lua_State *L);

/* `sidekick lua-test [--] FILE...` (argv after "lua-test"): runs offline filter
 * tests; --help prints the usage. Exit status: 0, 1 (a failure), 2 (usage). */
int sk_lua_test_main(int argc, char **argv);

#endif
