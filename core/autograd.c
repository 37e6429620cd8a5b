/* The autograd engine: grad mode, recording nodes, and backward. The
 * derivative rules themselves live in core/derivatives.c. */
#include "autograd.h"
#include "../trace/trace.h"
#include <stdlib.h>
#include <string.h>

static _Thread_local int no_grad_depth;

void kn_no_grad_begin(void) { no_grad_depth++; }
void kn_no_grad_end(void) {
    if (no_grad_depth > 0) no_grad_depth--;
    else kn__error("kn_no_grad_end: no matching kn_no_grad_begin");
}
bool kn_grad_enabled(void) { return no_grad_depth == 0; }

kn_tensor *kn_set_requires_grad(kn_tensor *t, bool on) {
    KN_CHECK("kn_set_requires_grad", t);
    if (t->grad_fn)
        return kn__error("kn_set_requires_grad: only leaves can be marked (this tensor was made by "
                         "kn_%s; use kn_detach first)", kn_op_table[t->grad_fn->op].name);
    if (on && !kn__is_float(t->dtype))
        return kn__error("kn_set_requires_grad: only float tensors can require grad (got %s)",
                         kn_dtype_name(t->dtype));
    t->requires_grad = on;
    return t;
}

bool kn_requires_grad(const kn_tensor *t) { return t && t->requires_grad; }
bool kn_is_leaf(const kn_tensor *t) { return t && !t->grad_fn; }
kn_tensor *kn_grad(const kn_tensor *t) {
    if (!t) return NULL;
    if (kn__trace && t->grad) kn__trace_grad_read((kn_tensor *)t, t->grad);
    return t->grad;
}

void kn_zero_grad(kn_tensor *t) {
    if (!t) return;
    if (kn__trace) kn__trace_zero_grad(t);
    kn_release(t->grad);
    t->grad = NULL;
}

kn_tensor *kn_detach(kn_tensor *t) {
    KN_CHECK("kn_detach", t);
    kn_tensor *d = kn__view(t, t->shape, t->strides, t->ndim, t->offset);
    kn__trace_alias(d, t);
    return d;
}

/* ---- recording ---- */
bool kn__needs_grad(kn_tensor *const *in, int nin) {
    if (no_grad_depth) return false;
    for (int i = 0; i < nin; i++)
        if (in[i] && in[i]->requires_grad) return true;
    return false;
}

void kn__node_release(kn_node *n) {
    if (!n || atomic_fetch_sub(&n->refcount, 1) != 1) return;
    for (int i = 0; i < n->nin; i++) kn_release(n->in[i]);
    kn_release(n->out);
    free(n->in);
    free(n->in_version);
    free(n);
}

/* Drops the values a node saved; the node stays as a marker in the graph. */
static void node_free_saved(kn_node *n) {
    if (n->freed) return;
    n->freed = true;
    kn_release(n->out);
    n->out = NULL;
}

kn_tensor *kn__record(kn_op op, kn_tensor *out, kn_tensor *const *in, int nin, const kn_params *p) {
    if (!out) return NULL;
    if (kn__trace) kn__trace_op(op, out, in, nin, p);
    if (!kn__needs_grad(in, nin) || !kn__is_float(out->dtype)) return out;
    if (!kn_derivatives[op].rule) return out;  /* not differentiable: argmax, comparisons */
    for (int i = 0; i < nin; i++)
        if (in[i] == out) return out;  /* an op that returned its input: nothing to record */
    kn_node *n = calloc(1, sizeof *n);
    if (n) {
        n->in = calloc((size_t)nin, sizeof *n->in);
        n->in_version = calloc((size_t)nin, sizeof *n->in_version);
    }
    if (!n || !n->in || !n->in_version) {
        if (n) { free(n->in); free(n->in_version); free(n); }
        kn__drop(out);
        return kn__error("kn_%s: out of memory recording the autograd graph", kn_op_table[op].name);
    }
    atomic_init(&n->refcount, 1);
    n->op = op;
    n->nin = nin;
    for (int i = 0; i < nin; i++) {
        n->in[i] = kn_retain(in[i]);
        if (in[i]) n->in_version[i] = atomic_load(&in[i]->storage->version);
    }
    if (p) n->p = *p;
    if (kn_derivatives[op].saves_out) {
        /* An alias without grad_fn: holding out itself would be a cycle. */
        n->out = kn_keep(kn__view(out, out->shape, out->strides, out->ndim, out->offset));
        kn__trace_alias(n->out, out);
        n->out_version = atomic_load(&out->storage->version);
    }
    out->requires_grad = true;
    out->grad_fn = n;
    return out;
}

/* ---- backward ---- */
typedef struct { kn_node **v; int64_t n, cap; } node_list;

static bool push(node_list *l, kn_node *n) {
    if (l->n == l->cap) {
        int64_t cap = l->cap ? l->cap * 2 : 64;
        kn_node **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return false;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = n;
    return true;
}

/* Nodes reachable from root, each with `pending` = number of consumers. */
static bool collect(kn_node *root, node_list *all) {
    node_list stack = {0};
    bool ok = push(&stack, root) && push(all, root);
    root->queued = true;
    root->pending = 0;
    while (ok && stack.n) {
        kn_node *n = stack.v[--stack.n];
        for (int i = 0; i < n->nin; i++) {
            kn_tensor *x = n->in[i];
            if (!x || !x->requires_grad || !x->grad_fn) continue;
            kn_node *m = x->grad_fn;
            if (!m->queued) {
                m->queued = true;
                m->pending = 0;
                ok = ok && push(&stack, m) && push(all, m);
            }
            m->pending++;
        }
    }
    free(stack.v);
    return ok;
}

/* References here are pool ones (backward runs in its own pool). */
static bool accumulate(kn_tensor **acc, kn_tensor *g) {
    if (!*acc) {
        *acc = kn__ret(g);
        return true;
    }
    kn_tensor *s = kn_add(*acc, g);
    if (!s) return false;
    kn__drop(*acc);
    *acc = s;
    return true;
}

static int check_versions(kn_node *n) {
    const kn_derivative *d = &kn_derivatives[n->op];
    const char *name = kn_op_table[n->op].name;
    if (n->freed) {
        kn__error("kn_backward: the graph through kn_%s was already freed by an earlier backward "
                  "(use kn_backward_ex with create_graph to keep it)", name);
        return -1;
    }
    for (int i = 0; i < n->nin; i++) {
        if (!(d->saves >> i & 1) || !n->in[i]) continue;
        unsigned long v = atomic_load(&n->in[i]->storage->version);
        if (v != n->in_version[i]) {
            kn__error("kn_backward: input %d of kn_%s was modified in place after it was saved for "
                      "backward (version %lu, expected %lu)", i, name, v, n->in_version[i]);
            return -1;
        }
    }
    if (n->out && atomic_load(&n->out->storage->version) != n->out_version) {
        kn__error("kn_backward: the output of kn_%s was modified in place after it was saved for "
                  "backward", name);
        return -1;
    }
    return 0;
}

typedef struct { kn_tensor *leaf, *g; } leaf_grad;

int kn_backward_ex(kn_tensor *out, kn_tensor *grad_out, bool create_graph) {
    if (!out) return kn__null_arg("kn_backward"), -1;
    if (!out->requires_grad) {
        kn__error("kn_backward: the tensor does not require grad (no input was marked with "
                  "kn_set_requires_grad, or it was made under no-grad)");
        return -1;
    }
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    if (!grad_out && kn__tnumel(out) != 1) {
        kn__error("kn_backward: output of shape %s is not a scalar; pass grad_out",
                  kn__shape_str(out->shape, out->ndim, b0));
        return -1;
    }
    if (grad_out && (grad_out->ndim != out->ndim ||
                     memcmp(grad_out->shape, out->shape, (size_t)out->ndim * sizeof(int64_t)))) {
        kn__error("kn_backward: grad_out has shape %s but the output has %s",
                  kn__shape_str(grad_out->shape, grad_out->ndim, b0),
                  kn__shape_str(out->shape, out->ndim, b1));
        return -1;
    }
    int rc = -1;
    kn_pool_push();  /* every temporary of this pass dies at the pop */
    if (!create_graph) kn_no_grad_begin();
    node_list all = {0}, ready = {0};
    leaf_grad *leaves = NULL;
    int64_t nleaves = 0;
    kn_tensor *g0 = grad_out ? kn_cast(grad_out, out->dtype) : kn_ones(out->shape, out->ndim, out->dtype);
    if (!g0) goto done;
    if (!out->grad_fn) {  /* out is itself a leaf */
        leaves = malloc(sizeof *leaves);
        if (!leaves) goto done;
        leaves[nleaves++] = (leaf_grad){out, g0};
        rc = 0;
        goto apply;
    }
    if (!collect(out->grad_fn, &all)) {
        kn__error("kn_backward: out of memory");
        goto done;
    }
    leaves = malloc((size_t)(all.n * 2 + 1) * sizeof *leaves);
    if (!leaves) goto done;
    out->grad_fn->gacc = kn__ret(g0);
    push(&ready, out->grad_fn);
    while (ready.n) {
        kn_node *n = ready.v[--ready.n];
        if (check_versions(n) != 0) goto done;
        kn_tensor *gin[KN_MAX_DIMS * 8] = {0};
        kn_tensor **gv = n->nin <= (int)(sizeof gin / sizeof *gin) ? gin : calloc((size_t)n->nin, sizeof *gv);
        if (!gv) goto done;
        int r = kn_derivatives[n->op].rule(n, n->gacc, gv);
        for (int i = 0; i < n->nin && r == 0; i++) {
            kn_tensor *x = n->in[i];
            if (!x || !x->requires_grad || !gv[i]) continue;
            if (x->grad_fn) {
                if (!accumulate(&x->grad_fn->gacc, gv[i])) r = -1;
                else if (--x->grad_fn->pending == 0 && !push(&ready, x->grad_fn)) r = -1;
            } else {
                int64_t k = 0;  /* the same leaf may appear several times */
                while (k < nleaves && leaves[k].leaf != x) k++;
                if (k == nleaves) leaves[nleaves++] = (leaf_grad){x, NULL};
                if (!accumulate(&leaves[k].g, gv[i])) r = -1;
            }
        }
        for (int i = 0; i < n->nin; i++) kn__drop(gv[i]);
        if (gv != gin) free(gv);
        kn__drop(n->gacc);  /* frees this gradient as soon as it is used */
        n->gacc = NULL;
        if (r != 0) goto done;
    }
    rc = 0;
apply:
    /* All gradients are computed: only now touch the leaves. */
    for (int64_t k = 0; k < nleaves; k++) {
        kn_tensor *leaf = leaves[k].leaf;
        /* kn_cast copies, so a leaf's grad never aliases another tensor. */
        kn_tensor *ng = kn_cast(leaves[k].g, leaf->dtype);
        if (ng && leaf->grad) ng = kn_add(leaf->grad, ng);
        if (!ng) {
            rc = -1;
            continue;
        }
        kn_release(leaf->grad);
        leaf->grad = kn_keep(ng);
        kn__trace_set_grad(leaf, ng);
    }
    if (!create_graph)
        for (int64_t i = 0; i < all.n; i++) node_free_saved(all.v[i]);
done:
    for (int64_t i = 0; i < all.n; i++) {
        all.v[i]->gacc = NULL;  /* pool references: the pop below frees them */
        all.v[i]->queued = false;
    }
    free(all.v);
    free(ready.v);
    free(leaves);
    if (!create_graph) kn_no_grad_end();
    kn_pool_pop();
    return rc;
}

int kn_backward(kn_tensor *out, kn_tensor *grad_out) { return kn_backward_ex(out, grad_out, false); }
