/* The autograd engine's internals: nodes, recording, derivative rules. */
#ifndef KN_AUTOGRAD_H
#define KN_AUTOGRAD_H

#include "internal.h"
#include "ops.h"

/* Non-tensor arguments an op's rule needs (dims, flags, constants). */
typedef struct {
    int64_t i[2 * KN_MAX_DIMS];
    double d[4];
} kn_params;

typedef struct kn_node {
    atomic_long refcount;
    kn_op op;
    int nin;
    kn_tensor **in;            /* strong refs: inputs as the op saw them */
    unsigned long *in_version; /* storage versions at record time */
    kn_tensor *out;            /* a grad-free alias of the output, when saved */
    unsigned long out_version;
    kn_params p;
    bool freed;                /* saved values dropped after backward */
    /* scratch for one backward pass */
    kn_tensor *gacc;
    int pending;
    bool queued;
} kn_node;

/* A derivative rule: given the output gradient g, sets gin[i] (new
 * references) for each input i with in[i]->requires_grad; others stay NULL.
 * Returns 0, or -1 with an error. Rules are written with kn_ ops. */
typedef int (*kn_rule)(kn_node *n, kn_tensor *g, kn_tensor **gin);
typedef struct {
    kn_rule rule;
    unsigned saves;    /* bit i: the rule reads input i's values */
    bool saves_out;    /* the rule reads the output's values */
} kn_derivative;
extern const kn_derivative kn_derivatives[KN_OP_COUNT];

/* True when out would need a node: grad mode on and an input requires grad. */
bool kn__needs_grad(kn_tensor *const *in, int nin);
/* Attaches a node for op to out when kn__needs_grad. Returns out, or NULL
 * (out released) when recording fails. p may be NULL. */
kn_tensor *kn__record(kn_op op, kn_tensor *out, kn_tensor *const *in, int nin, const kn_params *p);
void kn__node_release(kn_node *n);
/* How many elements x has over the dims in mask, as a 0-dim f64 tensor. An
 * op, so a plan recomputes it for every call's sizes. */
kn_tensor *kn__count(kn_tensor *x, int64_t mask);
/* g summed down to shape (undoing broadcasting); a new reference. */
kn_tensor *kn__sum_to(kn_tensor *g, const int64_t *shape, int ndim);
/* Marks t's storage as written in place. */
static inline void kn__bump_version(kn_tensor *t) { atomic_fetch_add(&t->storage->version, 1); }

#endif
