/*
 * list.h — an intrusive doubly linked list (the links live inside the
 * listed objects; no allocation to list or unlist).
 */
#ifndef SK_LIST_H
#define SK_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sk_link {
    struct sk_link *prev, *next;
} sk_link;

static inline void sk_list_init(sk_link *l)
{
    l->prev = l->next = l;
}
static inline bool sk_list_empty(const sk_link *l)
{
    return l->next == l;
}
/* Inserts n right after head (so head->next is the newest). */
static inline void sk_list_insert(sk_link *head, sk_link *n)
{
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}
/* Unlinks n; n is an empty list afterwards (removing twice is harmless). */
static inline void sk_list_remove(sk_link *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
/* The object of type `type` whose member `field` is at p. */
#define SK_CONTAINER(p, type, field) ((type *)((char *)(p)-offsetof(type, field)))

#endif
