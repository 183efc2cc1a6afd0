/*
 * config_internal.h — what the files of the config layer share: the load
 * context, the sections being read, key tables, and the helpers that record
 * errors and copy strings (config.c), the key handlers (keys.c) and the
 * value syntax (values.c). Not used outside config/.
 */
#ifndef SK_CONFIG_INTERNAL_H
#define SK_CONFIG_INTERNAL_H

#include <stdarg.h>
#include <stdio.h>

#include "config.h"

enum { SEC_SIDEKICK = 0, SEC_LISTENER, SEC_ROUTE, SEC_CLUSTER, SEC_PLUGIN, SEC_TLS };
#define SEC_COUNT 6
/* Section kind names, by SEC_* (config.c). */
extern const char *const sk__cfg_kind_names[SEC_COUNT];

#define MAX_KEYS   48
#define KEY_REPEAT 1u /* the key may appear more than once in a section */

/* One section of the file, with what pass 2 and 3 need to know about it. */
typedef struct sect {
    int kind;               /* SEC_* */
    int line;               /* line of the section header */
    const char *name;       /* the object's name ("" for [sidekick]), not owned */
    void *obj;              /* sk_listener, sk_route, sk_cluster, or the sk_config */
    int key_line[MAX_KEYS]; /* line of each key of the kind's table, 0 = absent */
    char *ref;              /* listener: `cluster` name; route: `listener` name */
    char *tls_ref;          /* listener, cluster: `tls` name */
    char **names;           /* route: the cluster names of `cluster`, parallel to clusters */
    size_t nnames;          /* number of names */
    char **pnames;          /* listener, route: the instance names of `plugins` */
    size_t npnames;         /* number of them */
    int lua_key_line;       /* route: line of the first `lua.NAME` key, 0 if none */
    char lua_key[64];       /* its name */
} sect;

typedef struct ctx ctx;
typedef struct keydef keydef;
typedef int (*key_fn)(ctx *x, sect *s, const keydef *k, const char *v);

/* One key of a section kind. `fn` NULL = in the design, not implemented yet. */
struct keydef {
    const char *name;
    key_fn fn;
    unsigned flags;    /* KEY_* */
    size_t off;        /* generic handlers: offset of the field in the object */
    uint64_t min, max; /* generic handlers: accepted range */
};

struct ctx {
    sk_config *cfg;   /* being built */
    const char *path; /* the file as named by the caller, for messages */
    char *dir;        /* absolute directory of the file */
    FILE *fp;         /* the file (a memory stream over snapshot) */
    char *snapshot;   /* the file's bytes, read at once */
    char *buf;        /* getline buffer */
    size_t bufcap;    /* its size */
    int lineno;       /* line last handed to inih */
    bool failed;      /* an error was recorded: stop parsing */
    char *err;        /* first error, malloc'd (NULL if even that failed) */
    int err_line;     /* its line, 0 for file-level errors */
    sect **sects;     /* every section, in file order */
    size_t nsects;    /* number of sections */
    sect *cur;        /* the section keys currently belong to, or NULL */
    const char *key;  /* the key being handled, for messages */
};

/* The key table of each section kind (keys.c), by SEC_*. */
extern const keydef *const sk__cfg_key_tables[];

/* Records the first error "FILE:LINE: [SECTION NAME] KEY: message"; returns -1. */
int sk__cfg_fail_at(ctx *x, int line, const sect *s, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The same at the key being handled. Returns -1. */
int sk__cfg_bad(ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The port of an address (values.c). */
unsigned sk__cfg_addr_port(const sk_addr *a);
/* Records "out of memory"; returns -1 (config.c). */
int sk__cfg_oom(ctx *x);
/* strdup that records OOM; NULL then. */
char *sk__cfg_strdup(ctx *x, const char *s);
/* Appends p to the pointer array *arrp of *n elements. 0 or -1 (OOM recorded). */
int sk__cfg_push(ctx *x, void *arrp, size_t *n, void *p);
/* Trims spaces and tabs at both ends, in place. */
char *sk__cfg_trim(char *s);
/* Is s an RFC 9110 token / a section or instance name? */
bool sk__cfg_is_token(const char *s);
bool sk__cfg_is_name(const char *s);
/* Splits a comma list into trimmed, non-empty items (in the malloc'd *items
 * pointing into the malloc'd *copy). Their number, or -1 with an error. */
int sk__cfg_split_list(ctx *x, const char *v, char **copy, char ***items);
/* v made absolute against the file's directory, "." and ".." removed
 * lexically. malloc'd, or NULL (OOM recorded). */
char *sk__cfg_resolve_path(ctx *x, const char *v);
/* Replaces the string *field by p (owned). 0, or -1 when p is NULL. */
int sk__cfg_set_str(ctx *x, char **field, char *p);
/* The line of key `name` in section s, 0 when absent (keys.c). */
int sk__cfg_key_line(const sect *s, const char *name);

/* Parses leading decimal digits at *sp (advancing it); 0, or -1 on none or overflow (values.c). */
int sk__cfg_digits(const char **sp, uint64_t *out);
/* A whole decimal number. 0 or -1. */
int sk__cfg_parse_u64(const char *s, uint64_t *out);
/* A `lua.NAME = value` key of a route (keys.c). 0, or -1 with an error. */
int sk__cfg_lua_key(ctx *x, sect *s, const char *name, const char *value);

#endif
