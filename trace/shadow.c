/* KN_SHADOW=1: every cache hit runs the plan, undoes its side effects, runs
 * the body eagerly while recording, and compares the two node by node. The
 * first node whose values differ is reported; the call returns the eager
 * results. A recording assigns value ids in the order the body makes them,
 * so a deterministic body numbers its values the same way twice. */
#include "ir.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Index of the first element where a and b differ beyond tolerance, or -1. */
static int64_t first_difference(const kn_tensor *a, const kn_tensor *b, double *va, double *vb) {
    if (a->dtype != b->dtype || a->ndim != b->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof(int64_t)))
        return *va = *vb = NAN, 0;
    kn_tensor *ca = kn_contiguous((kn_tensor *)a), *cb = kn_contiguous((kn_tensor *)b);
    int64_t n = kn__tnumel(a), bad = -1;
    size_t sz = kn_dtype_size(a->dtype);
    for (int64_t i = 0; i < n && bad < 0; i++) {
        double x = kn__load(kn__ptr(ca) + (size_t)i * sz, a->dtype), y = kn__load(kn__ptr(cb) + (size_t)i * sz, a->dtype);
        bool same = x == y || (isnan(x) && isnan(y)) || (kn__is_float(a->dtype) && fabs(x - y) <= 1e-5 * fabs(y) + 1e-6);
        if (!same) {
            bad = i;
            *va = x;
            *vb = y;
        }
    }
    kn__drop(ca);
    kn__drop(cb);
    return bad;
}

/* Compares traced value id (made by op) with the eager recording's value of
 * that id; reports the first difference. */
static bool differs(kn_fn *f, const kn_trace *et, kn_tensor **all, int id, kn_op op) {
    if (!all[id]) return false;
    kn_op eop = id < et->nvals && et->vals[id].kind == V_NODE ? et->nodes[et->vals[id].index].op : KN_OP_COUNT;
    /* a linear_relu node stands where eager recorded the relu */
    bool aligned = et->vt && id < et->nvals && et->vt[id] && (eop == op || (op == KN_OP_linear_relu && eop == KN_OP_relu));
    double va = NAN, vb = NAN;
    int64_t at = aligned ? first_difference(all[id], et->vt[id], &va, &vb) : 0;
    if (at < 0) return false;
    f->stats.shadow_mismatches++;
    snprintf(f->stats.shadow_report, sizeof f->stats.shadow_report,
             aligned ? "node %%%d = %s differs from eager at element %lld: traced %.9g, eager %.9g"
                     : "node %%%d = %s has no eager counterpart: the body took another path%.0lld%.0g%.0g",
             id, kn_op_table[op].name, (long long)at, va, vb);
    fprintf(stderr, "KN_SHADOW: kn_function %s: %s\n", f->name, f->stats.shadow_report);
    return true;
}

typedef struct { kn_tensor *target, *copy; } saved_write;
typedef struct { kn_tensor *leaf, *grad; } saved_grad;

int kn__shadow_call(kn_fn *f, const plan *pl, kn_tensor *const *in, kn_tensor **out) {
    const kn_trace *tr = pl->tr;
    kn_tensor **all = calloc((size_t)tr->nvals + 1, sizeof *all), *tout[64] = {0}, *res[64] = {0};
    saved_write *w = calloc((size_t)tr->nnodes + 1, sizeof *w);
    saved_grad *g = calloc((size_t)tr->nnodes + 1, sizeof *g);
    int nw = 0, ng = 0, outs[64], rc = -1;
    kn_trace *et = NULL;
    if (!all || !w || !g) {
        kn__error("kn_call %s: out of memory in shadow mode", f->name);
        goto done;
    }
    /* What the plan changes, so it can be put back before the eager run. */
    for (int k = 0; k < tr->nnodes; k++) {
        const tnode *n = &tr->nodes[k];
        const tvalue *v = n->in[0] >= 0 ? &tr->vals[n->in[0]] : NULL;
        kn_tensor *t = !v ? NULL : v->kind == V_INPUT ? in[v->index] : v->t;
        if (!t) continue;
        if (n->kind == N_WRITE) {
            kn_tensor *c = kn__alloc(t->shape, t->ndim, t->dtype);
            if (c) kn__copy(c, t);
            w[nw++] = (saved_write){t, c ? kn_keep(c) : NULL};
        } else if (n->kind == N_SET_GRAD || n->kind == N_ZERO_GRAD) {
            g[ng++] = (saved_grad){t, kn_retain(t->grad)};
        }
    }
    uint64_t seed, offset;
    kn__philox_state(&seed, &offset);
    if (kn__run_plan(f->name, pl, f->nout, in, tout, &f->stats.peak_bytes, all) != 0) goto done;
    for (int i = 0; i < nw; i++)
        if (w[i].copy) kn__copy(w[i].target, w[i].copy);
    for (int i = 0; i < ng; i++) {  /* the first save of a leaf holds its original gradient */
        bool first = true;
        for (int j = 0; j < i && first; j++) first = g[j].leaf != g[i].leaf;
        if (!first) continue;
        kn_release(g[i].leaf->grad);
        g[i].leaf->grad = kn_retain(g[i].grad);
    }
    kn__philox_restore(seed, offset);
    if (!(et = kn__record_body(f, in, res, outs))) goto done;
    for (int k = 0; k < tr->nnodes; k++) {
        const tnode *n = &tr->nodes[k];
        const int *sv;
        int ns = n->kind == N_SCALARS ? kn__scalars_outs(n, &sv) : 0;
        bool bad = false;
        for (int e = 0; e < ns && !bad; e++) bad = differs(f, et, all, sv[e], kn__scalars_op(n, e));
        if (bad || ((n->kind == N_OP || n->kind == N_FUSED) && differs(f, et, all, n->out, n->op))) break;
    }
    for (int k = 0; k < f->nout; k++) out[k] = kn__hand_over(res[k]);
    rc = 0;
done:
    for (int k = 0; k < f->nout; k++) kn_release(tout[k]);
    for (int i = 0; all && i < tr->nvals; i++) kn_release(all[i]);
    for (int i = 0; i < nw; i++) kn_release(w[i].copy);
    for (int i = 0; i < ng; i++) kn_release(g[i].grad);
    kn__trace_free(et);
    free(all);
    free(w);
    free(g);
    return rc;
}
