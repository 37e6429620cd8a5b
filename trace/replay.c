/* The reference executor: runs a plan node by node through the same eager
 * ops, freeing each value after its last use. */
#include "ir.h"
#include "../backends/cpu/onednn.h"
#include "../eager/conv.h"
#include <stdlib.h>
#include <string.h>

static int dims_of_mask(int64_t mask, int *dims) {
    int n = 0;
    for (int d = 0; d < KN_MAX_DIMS; d++)
        if (mask >> d & 1) dims[n++] = d;
    return n;
}

kn_tensor *kn__op_call(const tnode *n, const tvalue *outv, kn_tensor **a) {
    const kn_params *p = &n->p;
    int dims[KN_MAX_DIMS], nd = dims_of_mask(p->i[0], dims);
    bool keep = p->i[1] != 0;
    switch (n->op) {
#define KN_UNARY_FLOAT(name) case KN_OP_##name: return kn_##name(a[0]);
#define KN_UNARY_FLOAT_NOAPI(name)
#define KN_BINARY(name) case KN_OP_##name: return kn_##name(a[0], a[1]);
#define KN_COMPARE(name, op) KN_BINARY(name)
#define KN_LOGICAL(name, op) KN_BINARY(name)
#include "../core/ops.def"
    case KN_OP_gelu: return kn_gelu(a[0], KN_GELU_ERF);
    case KN_OP_gelu_tanh: return kn_gelu(a[0], KN_GELU_TANH);
    case KN_OP_neg: return kn_neg(a[0]);
    case KN_OP_abs: return kn_abs(a[0]);
    case KN_OP_relu: return kn_relu(a[0]);
    case KN_OP_clamp: return kn_clamp(a[0], p->d[0], p->d[1]);
    case KN_OP_logical_not: return kn_logical_not(a[0]);
    case KN_OP_where: return kn_where(a[0], a[1], a[2]);
    case KN_OP_cast: return kn_cast(a[0], outv->dtype);
    case KN_OP_sum: return kn_sum(a[0], dims, nd, keep);
    case KN_OP_mean: return kn_mean(a[0], dims, nd, keep);
    case KN_OP_max: return kn_max(a[0], dims, nd, keep);
    case KN_OP_min: return kn_min(a[0], dims, nd, keep);
    case KN_OP_var: return kn_var(a[0], dims, nd, (int)p->i[2], keep);
    case KN_OP_logsumexp: return kn_logsumexp(a[0], dims, nd, keep);
    case KN_OP_argmax: return kn_argmax(a[0], nd ? dims[0] : 0, keep);
    case KN_OP_argmin: return kn_argmin(a[0], nd ? dims[0] : 0, keep);
    case KN_OP_count: return kn__count(a[0], p->i[0]);
    case KN_OP_rand: return kn_rand(outv->shape, outv->ndim, outv->dtype);
    case KN_OP_randn: return kn_randn(outv->shape, outv->ndim, outv->dtype);
    case KN_OP_reshape: return kn_reshape(a[0], outv->shape, outv->ndim);
    case KN_OP_permute: {
        int perm[KN_MAX_DIMS];
        for (int d = 0; d < outv->ndim; d++) perm[d] = (int)p->i[d];
        return kn_permute(a[0], perm, outv->ndim);
    }
    case KN_OP_slice: {
        int dim = (int)p->i[0];
        int64_t start = p->i[1], step = p->i[2], len = outv->shape[dim];
        return kn_slice(a[0], dim, start, len ? start + (len - 1) * step + 1 : start, step);
    }
    case KN_OP_expand: return kn_expand(a[0], outv->shape, outv->ndim);
    case KN_OP_contiguous: return kn_contiguous(a[0]);
    case KN_OP_cat: return kn_cat(a, n->nin, (int)p->i[0]);
    case KN_OP_gather: return kn_gather(a[0], (int)p->i[0], a[1]);
    case KN_OP_index_select: return kn_index_select(a[0], (int)p->i[0], a[1]);
    case KN_OP_scatter_add: return kn_scatter_add(a[0], (int)p->i[0], a[1], a[2]);
    case KN_OP_index_add: return kn_index_add(a[0], (int)p->i[0], a[1], a[2]);
    case KN_OP_one_hot: return kn_one_hot(a[0], p->i[0], outv->dtype);
    case KN_OP_matmul: return kn_matmul(a[0], a[1]);
    case KN_OP_linear: return kn_linear(a[0], a[1], n->nin > 2 ? a[2] : NULL);
    case KN_OP_linear_relu: return kn__linear_relu(a[0], a[1], n->nin > 2 ? a[2] : NULL);
    case KN_OP_softmax: return kn_softmax(a[0], (int)p->i[0]);
    case KN_OP_log_softmax: return kn_log_softmax(a[0], (int)p->i[0]);
    case KN_OP_layer_norm:
        return kn_layer_norm(a[0], (int)p->i[0], n->nin > 1 ? a[1] : NULL, n->nin > 2 ? a[2] : NULL, p->d[0]);
    case KN_OP_cross_entropy: return kn_cross_entropy(a[0], a[1], (kn_reduction)p->i[0]);
    case KN_OP_conv2d: return kn_conv2d(a[0], a[1], n->nin > 2 ? a[2] : NULL, (int)p->i[0], (int)p->i[1]);
    case KN_OP_conv2d_grad_input: return kn__conv2d_grad_input(a[0], a[1], &p->i[2], (int)p->i[0], (int)p->i[1]);
    case KN_OP_conv2d_grad_weight: return kn__conv2d_grad_weight(a[0], a[1], &p->i[2], (int)p->i[0], (int)p->i[1]);
    case KN_OP_max_pool2d: return kn_max_pool2d(a[0], (int)p->i[0], (int)p->i[1], (int)p->i[2]);
    case KN_OP_max_pool2d_grad: return kn__max_pool2d_grad(a[0], a[1], (int)p->i[0], (int)p->i[1], (int)p->i[2]);
    default: return kn__error("kn_call: op kn_%s cannot be replayed", kn_op_table[n->op].name);
    }
}

static int64_t bytes_of(const kn_tensor *t) { return t ? kn__tnumel(t) * (int64_t)kn_dtype_size(t->dtype) : 0; }

/* Values ids[0..n) of a node beside its result (a kernel's extra outputs, a
 * scalar chain's values): into v (and all, in shadow mode); their bytes. */
static int64_t keep_values(kn_tensor **v, kn_tensor **all, const int *ids, kn_tensor *const *t, int n) {
    int64_t bytes = 0;
    for (int e = 0; e < n; e++) {
        v[ids[e]] = t[e];
        if (all) all[ids[e]] = kn_retain(t[e]);
        bytes += bytes_of(t[e]);
    }
    return bytes;
}

/* tv's shape at this call: its symbolic dims take the inputs' sizes. */
static void shape_now(const tvalue *tv, kn_tensor *const *in, int64_t *shape) {
    for (int d = 0; d < tv->ndim; d++) {
        int s = tv->sym[d];
        shape[d] = s >= 0 ? in[s / KN_MAX_DIMS]->shape[s % KN_MAX_DIMS] : tv->shape[d];
    }
}

int kn__run_plan(const char *name, const plan *pl, int nout, kn_tensor *const *in, kn_tensor **out,
                 int64_t *peak_bytes, kn_tensor **all) {
    int64_t live = 0, peak = 0;
    bool effects = false, symbolic = pl->symlen < pl->siglen || !pl->sig;
    const kn_trace *tr = pl->tr;
    /* The plan's arena serves this run's allocations (core/internal.h); it
     * is run state, so it is made on the first run. Callers run a plan on
     * one thread at a time (kn_call holds the function's lock). */
    plan *mpl = (plan *)pl;
    if (!mpl->arena) mpl->arena = kn__arena_new();
    kn_arena *arena = mpl->arena;
    size_t vbytes = ((size_t)tr->nvals + 1) * sizeof(kn_tensor *);
    kn_tensor **v = arena ? kn__arena_scratch(arena, vbytes) : NULL, **own_v = NULL;
    if (!v && !(v = own_v = calloc(1, vbytes))) return kn__error("kn_call %s: out of memory", name), -1;
    kn_arena *outer = arena ? kn__arena_enter(arena) : NULL;
    int rc = 0;
    for (int i = 0; i < tr->nvals && rc == 0; i++) {
        const tvalue *tv = &tr->vals[i];
        if (tv->kind == V_INPUT) v[i] = in[tv->index];
        else if (tv->kind == V_CAPTURE || tv->kind == V_CONST) v[i] = tv->t;
        else if (tv->kind == V_GRAD && !(v[i] = tv->t->grad) && pl->last_use[i] >= 0)
            rc = -1, kn__error("kn_call %s: a gradient the trace reads is missing (it existed when the "
                               "function was traced)", name);
    }
    kn_pool_push();
    if (tr->has_backward) kn_no_grad_begin();
    for (int k = 0; k < tr->nnodes && rc == 0; k++) {
        const tnode *n = &tr->nodes[k];
        kn_tensor *args[KN_NODE_MAX_IN];
        for (int j = 0; j < n->nin; j++) args[j] = n->in[j] >= 0 ? v[n->in[j]] : NULL;
        switch (n->kind) {
        case N_OP:
        case N_FUSED: {
            tvalue now = tr->vals[n->out];
            shape_now(&now, in, now.shape);
            kn_tensor *extra[KN_FUSE_MAX_EXTRA];
            int xv[KN_FUSE_MAX_EXTRA], nx = n->kind == N_FUSED ? kn__fused_extras(n, xv) : 0;
            kn_tensor *r = v[n->out] = n->kind == N_FUSED ? kn__fused_run(name, n, &now, args, extra)
                                                           : kn__op_call(n, &now, args);
            if (r) live += keep_values(v, all, xv, extra, nx);  /* in the captures their (later) writes target */
            if (r && (r->ndim != now.ndim || memcmp(r->shape, now.shape, (size_t)now.ndim * sizeof(int64_t)))) {
                char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
                kn__error("kn_call %s: node %%%d = %s gave %s where the plan expected %s%s", name, n->out,
                          kn_op_table[n->op].name, kn__shape_str(r->shape, r->ndim, b0),
                          kn__shape_str(now.shape, now.ndim, b1),
                          effects ? ", after in-place writes had run (KN_STATIC_SHAPES=1 avoids this)" : "");
                r = NULL;
            }
            if (!r) rc = symbolic && !effects ? KN__REPLAY_RESHAPE : -1;
            if (all && v[n->out]) all[n->out] = kn_retain(v[n->out]);  /* shadow mode keeps every value */
            live += bytes_of(v[n->out]);
            peak = live > peak ? live : peak;
            break;
        }
        case N_SCALARS: {
            const int *sv;
            int ns = kn__scalars_outs(n, &sv);
            kn_tensor *res[ns > 0 ? ns : 1];
            if (kn__scalars_run(name, n, args, res) != 0) {
                rc = -1;
                break;
            }
            live += keep_values(v, all, sv, res, ns);
            peak = live > peak ? live : peak;
            break;
        }
        case N_WRITE: {
            effects = true;
            int64_t shape[KN_MAX_DIMS];
            int nd;
            if (!kn__broadcast_shape(args[0]->shape, args[0]->ndim, args[1]->shape, args[1]->ndim, shape, &nd) ||
                nd != args[0]->ndim || memcmp(shape, args[0]->shape, (size_t)nd * sizeof *shape)) {
                rc = -1;
                kn__error("kn_call %s: an in-place write no longer fits its target", name);
                break;
            }
            if (!kn__same_view(args[0], args[1]))  /* a kernel may have written the target itself */
                kn__copy(args[0], args[1]);
            kn__bump_version(args[0]);
            break;
        }
        case N_SET_GRAD:
            effects = true;
            kn_release(args[0]->grad);
            args[0]->grad = kn_retain(args[1]);
            break;
        case N_ZERO_GRAD:
            effects = true;
            kn_zero_grad(args[0]);
            break;
        case N_COND: {
            /* Only the taken branch runs. */
            const kn_tensor *p = args[0];
            bool taken = kn__load(kn__ptr(p), p->dtype) != 0;
            int64_t inner = 0;
            rc = kn__run_plan(name, n->branch[taken ? 0 : 1], n->nout, args + 1, v + n->out, &inner, NULL);
            if (rc == KN__REPLAY_RESHAPE && (effects || !symbolic)) rc = -1;
            peak = live + inner > peak ? live + inner : peak;
            for (int k = 0; rc == 0 && k < n->nout; k++) live += bytes_of(v[n->out + k]);
            break;
        }
        }
        /* Free node values after their last use (liveness). */
        for (int j = 0; j < n->nin; j++) {
            int id = n->in[j];
            if (id >= 0 && pl->last_use[id] == k && tr->vals[id].kind == V_NODE && v[id]) {
                live -= bytes_of(v[id]);
                kn__drop(v[id]);
                v[id] = NULL;
            }
        }
    }
    if (tr->has_backward) kn_no_grad_end();
    /* A constant output is copied: each call returns its own tensor, as eager does. */
    for (int k = 0; k < nout && rc == 0; k++) {
        kn_tensor *o = v[pl->outs[k]];
        if (tr->vals[pl->outs[k]].kind == V_CONST && !(v[pl->outs[k]] = kn_cast(o, o->dtype))) rc = -1;
    }
    if (rc == 0)
        for (int k = 0; k < nout; k++) kn_retain(v[pl->outs[k]]);
    kn_pool_pop();
    if (arena) kn__arena_leave(arena, outer, rc == 0);  /* what is still referenced now escaped */
    if (rc == 0)
        for (int k = 0; k < nout; k++) out[k] = kn__hand_over(v[pl->outs[k]]);
    free(own_v);
    if (peak_bytes) *peak_bytes = peak;
    return rc;
}

