/* kn_cond: both branches become sub-plans of one node; a call runs the one
 * its predicate picks. */
#include "ir.h"
#include <stdlib.h>
#include <string.h>

/* Runs branch on in, outputs to out (new references). */
static int run_branch(kn_body branch, void *ctx, kn_tensor *const *in, kn_tensor **out, int nout) {
    kn_tensor *res[64] = {0};
    kn_pool_push();
    int rc = branch(ctx, in, res);
    for (int k = 0; k < nout && rc == 0; k++)
        if (!res[k]) rc = -1;
    for (int k = 0; k < nout && rc == 0; k++) kn_retain(res[k]);
    kn_pool_pop();
    if (rc != 0) return kn_last_error() ? -1 : (kn__error("kn_cond: a branch failed"), -1);
    for (int k = 0; k < nout; k++) out[k] = kn__hand_over(res[k]);
    return 0;
}

/* Records branch into a new sub-trace and builds its plan; res gets the
 * eager results (references we hold). */
static plan *record_branch(kn_trace *outer, kn_body branch, void *ctx, kn_tensor *const *in, int nin,
                           kn_tensor **res, int nout) {
    plan *pl = calloc(1, sizeof *pl);
    kn_trace *tr = calloc(1, sizeof *tr);
    int outs[64];
    if (!pl || !tr || !(pl->outs = malloc((size_t)nout * sizeof *pl->outs))) {
        free(tr);
        if (pl) kn__plan_free(pl);
        free(pl);
        return kn__error("kn_cond: out of memory");
    }
    pl->tr = tr;
    tr->stamp = outer->stamp;  /* tensors made by the outer body stay recognizable */
    tr->name = outer->name;
    tr->parent = outer;
    kn__trace_inputs(tr, in, nin);
    kn__trace = tr;
    kn_pool_push();
    int rc = branch(ctx, in, res);
    for (int k = 0; k < nout && rc == 0; k++) {
        if (!res[k]) rc = -1;
        else outs[k] = kn__value_of(tr, res[k]);
    }
    for (int k = 0; k < nout && rc == 0; k++) kn_retain(res[k]);
    kn__trace = outer;
    kn_pool_pop();
    /* A branch must be pure and see traced tensors only through in. */
    for (int i = 0; rc == 0 && i < tr->nnodes; i++)
        if (tr->nodes[i].kind != N_OP) {
            kn__error("kn_cond in kn_function '%s': a branch writes in place or runs backward; "
                      "branches must be pure", outer->name);
            rc = -2;
        }
    if (tr->exact) outer->exact = true;  /* sub-plans have no signature of their own */
    if (rc == 0 && tr->outer_ref) {
        kn__error("kn_cond in kn_function '%s': a branch uses a tensor the body computed without taking "
                  "it through in; pass it in the branch inputs", outer->name);
        rc = -2;
    }
    if (rc == 0 && (tr->oom || !kn__plan_build(pl, tr, outs, nout))) {
        kn__error("kn_cond: out of memory");
        rc = -2;
    }
    if (rc != 0) {
        if (rc == -2)
            for (int k = 0; k < nout; k++) kn_release(res[k]);
        else if (!kn_last_error())
            kn__error("kn_cond in kn_function '%s': a branch failed", outer->name);
        kn__plan_free(pl);
        free(pl);
        return NULL;
    }
    memcpy(pl->outs, outs, (size_t)nout * sizeof *outs);
    return pl;
}

int kn_cond(kn_tensor *pred, kn_body then_fn, kn_body else_fn, void *ctx, kn_tensor *const *in, int nin,
            kn_tensor **out, int nout) {
    if (!pred || !then_fn || !else_fn || !out || (nin && !in)) return kn__null_arg("kn_cond"), -1;
    for (int i = 0; i < nin; i++)
        if (!in[i]) return kn__null_arg("kn_cond"), -1;
    if (nin > 63 || nout < 1 || nout > 64)
        return kn__error("kn_cond: %d inputs and %d outputs (expected 0..63 and 1..64)", nin, nout), -1;
    if (kn__tnumel(pred) != 1) {
        char b[KN_SHAPE_BUF];
        return kn__error("kn_cond: the predicate has shape %s (expected one element)",
                         kn__shape_str(pred->shape, pred->ndim, b)), -1;
    }
    bool taken = kn__load(kn__ptr(pred), pred->dtype) != 0;
    kn_trace *outer = kn__trace;
    if (!outer) return run_branch(taken ? then_fn : else_fn, ctx, in, out, nout);

    kn_tensor *res[2][64] = {{0}};
    plan *br[2] = {record_branch(outer, then_fn, ctx, in, nin, res[0], nout), NULL};
    if (br[0]) br[1] = record_branch(outer, else_fn, ctx, in, nin, res[1], nout);
    int rc = br[0] && br[1] ? 0 : -1;
    for (int k = 0; k < nout && rc == 0; k++) {
        kn_tensor *a = res[0][k], *b = res[1][k];
        if (a->dtype != b->dtype || a->ndim != b->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof(int64_t))) {
            char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
            kn__error("kn_cond: output %d is %s%s in one branch and %s%s in the other", k, kn_dtype_name(a->dtype),
                      kn__shape_str(a->shape, a->ndim, b0), kn_dtype_name(b->dtype), kn__shape_str(b->shape, b->ndim, b1));
            rc = -1;
        }
    }
    tnode *n = NULL;
    if (rc == 0) {
        int ids[64];
        ids[0] = kn__value_of(outer, pred);
        for (int i = 0; i < nin; i++) ids[i + 1] = kn__value_of(outer, in[i]);
        if ((n = kn__new_node(outer, N_COND, KN_OP_COUNT, nin + 1))) {
            memcpy(n->in, ids, (size_t)(nin + 1) * sizeof *ids);
            n->branch[0] = br[0];
            n->branch[1] = br[1];
            n->nout = nout;
            for (int k = 0; k < nout; k++) {
                kn_tensor *r = res[taken ? 0 : 1][k];
                int v = kn__new_value(outer, V_NODE, outer->nnodes - 1, NULL, r);
                if (k == 0) n->out = v;
                kn__map_put(outer, r, v);
                kn__hold(outer, r);
            }
        }
        if (!n) rc = -1;
    }
    for (int b = 0; b < 2; b++) {
        if (rc != 0 && br[b]) {
            kn__plan_free(br[b]);
            free(br[b]);
        }
        for (int k = 0; k < nout && br[b]; k++) {
            if (rc == 0 && b == (taken ? 0 : 1)) out[k] = kn__hand_over(res[b][k]);
            else kn_release(res[b][k]);
        }
    }
    return rc;
}
