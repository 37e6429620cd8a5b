/* Derivative rules, one per differentiable op, written with kn_ ops (as in
 * PyTorch's derivatives.yaml). The same rules serve eager autograd and, run
 * under the tracer, backward IR. Rules run inside backward's pool, so their
 * temporaries need no releases. */
#include "autograd.h"
#include "../eager/conv.h"
#include <math.h>
#include <string.h>

#define IN(k) (n->in[k])
#define OUT (n->out)
#define NEED(k) (n->in[k] && n->in[k]->requires_grad)
/* Sets gin[k] to expr, summed and cast to input k's shape and dtype. */
#define SET(k, expr)                                                              \
    do {                                                                          \
        if (NEED(k) && !(gin[k] = grad_for(IN(k), (expr)))) return -1;            \
    } while (0)
#define RULE(name) static int d_##name(kn_node *n, kn_tensor *g, kn_tensor **gin)

kn_tensor *kn__sum_to(kn_tensor *g, const int64_t *shape, int ndim) {
    KN_CHECK("kn_backward", g);
    int lead = g->ndim - ndim, dims[KN_MAX_DIMS], nd = 0;
    if (lead < 0) return kn__error("kn_backward: gradient has fewer dims than its input");
    for (int i = 0; i < g->ndim; i++)
        if (i < lead || (shape[i - lead] == 1 && g->shape[i] != 1)) dims[nd++] = i;
    if (nd == 0 && lead == 0) return kn__ret(g);
    kn_tensor *s = kn_sum(g, dims, nd, true);
    return kn_reshape(s, shape, ndim);
}

static kn_tensor *grad_for(kn_tensor *x, kn_tensor *g) {
    kn_tensor *s = kn__sum_to(g, x->shape, x->ndim);
    return s && s->dtype != x->dtype ? kn_cast(s, x->dtype) : s;
}

static kn_tensor *num(double v, kn_tensor *like) { return kn_scalar(v, like->dtype); }
static kn_tensor *mask_of(kn_tensor *b, kn_tensor *like) { return kn_cast(b, like->dtype); }
static kn_tensor *zeros_like(kn_tensor *x) { return kn_zeros(x->shape, x->ndim, x->dtype); }

/* ---- elementwise ---- */
RULE(exp) { SET(0, kn_mul(g, OUT)); return 0; }
RULE(log) { SET(0, kn_div(g, IN(0))); return 0; }
RULE(sqrt) { SET(0, kn_div(g, kn_mul_scalar(OUT, 2))); return 0; }
RULE(rsqrt) { SET(0, kn_mul(g, kn_mul_scalar(kn_mul(OUT, kn_mul(OUT, OUT)), -0.5))); return 0; }
RULE(tanh) { SET(0, kn_mul(g, kn_add_scalar(kn_neg(kn_mul(OUT, OUT)), 1))); return 0; }
RULE(sigmoid) { SET(0, kn_mul(g, kn_mul(OUT, kn_add_scalar(kn_neg(OUT), 1)))); return 0; }
RULE(sin) { SET(0, kn_mul(g, kn_cos(IN(0)))); return 0; }
RULE(cos) { SET(0, kn_neg(kn_mul(g, kn_sin(IN(0))))); return 0; }
RULE(erf) {
    kn_tensor *x = IN(0);
    SET(0, kn_mul(g, kn_mul_scalar(kn_exp(kn_neg(kn_mul(x, x))), 1.1283791670955126)));
    return 0;
}
RULE(gelu) {  /* Phi(x) + x phi(x) */
    kn_tensor *x = IN(0);
    kn_tensor *cdf = kn_mul_scalar(kn_add_scalar(kn_erf(kn_mul_scalar(x, 0.7071067811865476)), 1), 0.5);
    kn_tensor *pdf = kn_mul_scalar(kn_exp(kn_mul_scalar(kn_mul(x, x), -0.5)), 0.3989422804014327);
    SET(0, kn_mul(g, kn_add(cdf, kn_mul(x, pdf))));
    return 0;
}
RULE(gelu_tanh) {
    const double k = 0.7978845608028654, c = 0.044715;
    kn_tensor *x = IN(0), *x2 = kn_mul(x, x);
    kn_tensor *t = kn_tanh(kn_mul_scalar(kn_add(x, kn_mul_scalar(kn_mul(x2, x), c)), k));
    kn_tensor *left = kn_mul_scalar(kn_add_scalar(t, 1), 0.5);
    kn_tensor *dt = kn_add_scalar(kn_neg(kn_mul(t, t)), 1);
    kn_tensor *du = kn_mul_scalar(kn_add_scalar(kn_mul_scalar(x2, 3 * c), 1), k);
    SET(0, kn_mul(g, kn_add(left, kn_mul_scalar(kn_mul(x, kn_mul(dt, du)), 0.5))));
    return 0;
}
RULE(neg) { SET(0, kn_neg(g)); return 0; }
RULE(abs) {
    kn_tensor *x = IN(0), *z = num(0, x);
    SET(0, kn_mul(g, kn_sub(mask_of(kn_gt(x, z), x), mask_of(kn_lt(x, z), x))));
    return 0;
}
/* relu(x) > 0 exactly where x > 0 (NaN in both: false), so the rule reads the
 * output: the input can die at the relu, and a traced step fuses it into
 * the linear before it (linear_relu). */
RULE(relu) { SET(0, kn_where(kn_gt(OUT, num(0, OUT)), g, num(0, g))); return 0; }
RULE(clamp) {
    kn_tensor *x = IN(0);
    kn_tensor *in_range = kn_logical_and(kn_ge(x, num(n->p.d[0], x)), kn_le(x, num(n->p.d[1], x)));
    SET(0, kn_where(in_range, g, num(0, g)));
    return 0;
}
RULE(add) { SET(0, kn__ret(g)); SET(1, kn__ret(g)); return 0; }
RULE(sub) { SET(0, kn__ret(g)); SET(1, kn_neg(g)); return 0; }
RULE(mul) { SET(0, kn_mul(g, IN(1))); SET(1, kn_mul(g, IN(0))); return 0; }
RULE(div) {
    kn_tensor *a = IN(0), *b = IN(1);
    SET(0, kn_div(g, b));
    SET(1, kn_neg(kn_div(kn_mul(g, a), kn_mul(b, b))));
    return 0;
}
RULE(pow) {  /* PyTorch's masking: no gradient through exponent 0 or base 0 */
    kn_tensor *a = IN(0), *b = IN(1), *z = num(0, g);
    SET(0, kn_where(kn_eq(b, z), z, kn_mul(g, kn_mul(b, kn_pow(a, kn_sub_scalar(b, 1))))));
    if (NEED(1)) {
        kn_tensor *d = kn_mul(g, kn_mul(kn_pow(a, b), kn_log(a)));
        SET(1, kn_where(kn_logical_and(kn_eq(a, z), kn_ge(b, z)), z, d));
    }
    return 0;
}
/* maximum/minimum: ties split the gradient, as in PyTorch. */
static int minmax(kn_node *n, kn_tensor *g, kn_tensor **gin, bool is_max) {
    kn_tensor *a = IN(0), *b = IN(1), *z = num(0, g);
    kn_tensor *shared = kn_where(kn_eq(a, b), kn_mul_scalar(g, 0.5), g);
    kn_tensor *a_loses = is_max ? kn_lt(a, b) : kn_gt(a, b);
    kn_tensor *b_loses = is_max ? kn_gt(a, b) : kn_lt(a, b);
    SET(0, kn_where(a_loses, z, shared));
    SET(1, kn_where(b_loses, z, shared));
    return 0;
}
RULE(maximum) { return minmax(n, g, gin, true); }
RULE(minimum) { return minmax(n, g, gin, false); }
RULE(where) {
    kn_tensor *z = num(0, g);
    SET(1, kn_where(IN(0), g, z));
    SET(2, kn_where(IN(0), z, g));
    return 0;
}
RULE(cast) { SET(0, kn__ret(g)); return 0; }

/* ---- reductions: p.i[0] = mask of reduced dims, p.i[1] = keepdim ---- */
/* g brought back to x's rank (reduced dims as size 1), then expanded. */
static kn_tensor *unreduce(kn_node *n, kn_tensor *g, kn_tensor *x) {
    kn_tensor *r = kn__ret(g);
    if (!n->p.i[1])
        for (int d = 0; d < x->ndim && r; d++)
            if (n->p.i[0] >> d & 1) r = kn_unsqueeze(r, d);
    return kn_expand(r, x->shape, x->ndim);
}

kn_tensor *kn__count(kn_tensor *x, int64_t mask) {
    KN_CHECK("kn_backward", x);
    double c = 1;
    for (int d = 0; d < x->ndim; d++)
        if (mask >> d & 1) c *= (double)x->shape[d];
    return kn__record(KN_OP_count, kn_scalar(c, KN_F64), &x, 1, &(kn_params){.i = {mask}});
}

static int reduced_dims(kn_node *n, kn_tensor *x, int *dims) {
    int nd = 0;
    for (int d = 0; d < x->ndim; d++)
        if (n->p.i[0] >> d & 1) dims[nd++] = d;
    return nd;
}

RULE(sum) { SET(0, unreduce(n, g, IN(0))); return 0; }
RULE(mean) { SET(0, kn_div(unreduce(n, g, IN(0)), kn__count(IN(0), n->p.i[0]))); return 0; }
static int amax_amin(kn_node *n, kn_tensor *g, kn_tensor **gin) {
    kn_tensor *x = IN(0);
    int dims[KN_MAX_DIMS], nd = reduced_dims(n, x, dims);
    kn_tensor *hit = mask_of(kn_eq(x, unreduce(n, OUT, x)), x);
    kn_tensor *ties = kn_sum(hit, dims, nd, true);  /* ties share evenly */
    SET(0, kn_div(kn_mul(unreduce(n, g, x), hit), ties));
    return 0;
}
RULE(max) { return amax_amin(n, g, gin); }
RULE(min) { return amax_amin(n, g, gin); }
RULE(var) {  /* p.i[2] = correction */
    kn_tensor *x = IN(0);
    int dims[KN_MAX_DIMS], nd = reduced_dims(n, x, dims);
    kn_tensor *centered = kn_sub(x, kn_mean(x, dims, nd, true));
    kn_tensor *dof = kn_sub_scalar(kn__count(x, n->p.i[0]), (double)n->p.i[2]);
    SET(0, kn_mul(unreduce(n, g, x), kn_div(kn_mul_scalar(centered, 2), dof)));
    return 0;
}
RULE(logsumexp) {
    kn_tensor *x = IN(0);
    SET(0, kn_mul(unreduce(n, g, x), kn_exp(kn_sub(x, unreduce(n, OUT, x)))));
    return 0;
}

/* ---- views and shape ops ---- */
RULE(reshape) { SET(0, kn_reshape(g, IN(0)->shape, IN(0)->ndim)); return 0; }
RULE(permute) {  /* p.i = perm */
    int inv[KN_MAX_DIMS];
    for (int d = 0; d < IN(0)->ndim; d++) inv[n->p.i[d]] = d;
    SET(0, kn_permute(g, inv, IN(0)->ndim));
    return 0;
}
RULE(slice) {  /* p.i = {dim, start, step}: add g into zeros at the sliced rows */
    int dim = (int)n->p.i[0];
    int64_t start = n->p.i[1], step = n->p.i[2], len = g->shape[dim];
    kn_tensor *idx = kn_arange((double)start, (double)(start + len * step), (double)step, KN_I64);
    SET(0, kn_index_add(zeros_like(IN(0)), dim, idx, g));
    return 0;
}
RULE(expand) { SET(0, kn__ret(g)); return 0; }  /* grad_for sums the broadcast dims */
RULE(contiguous) { SET(0, kn__ret(g)); return 0; }
RULE(cat) {  /* p.i[0] = dim */
    int dim = (int)n->p.i[0];
    int64_t off = 0;
    for (int k = 0; k < n->nin; k++) {
        kn_tensor *x = IN(k);
        if (x->ndim == 1 && x->shape[0] == 0 && g->ndim != 1) {  /* cat skipped it */
            SET(k, zeros_like(x));
            continue;
        }
        SET(k, kn_slice(g, dim, off, off + x->shape[dim], 1));
        off += x->shape[dim];
    }
    return 0;
}
RULE(gather) {  /* p.i[0] = dim; in = {x, index} */
    int dim = (int)n->p.i[0];
    SET(0, kn_scatter_add(zeros_like(IN(0)), dim, IN(1), g));
    return 0;
}
RULE(index_select) {
    int dim = (int)n->p.i[0];
    SET(0, kn_index_add(zeros_like(IN(0)), dim, IN(1), g));
    return 0;
}
RULE(scatter_add) {  /* in = {x, index, src} */
    SET(0, kn__ret(g));
    SET(2, kn_gather(g, (int)n->p.i[0], IN(1)));
    return 0;
}
RULE(index_add) {
    SET(0, kn__ret(g));
    SET(2, kn_index_select(g, (int)n->p.i[0], IN(1)));
    return 0;
}

/* ---- nn ---- */
RULE(matmul) {  /* 1-D operands become matrices, then batch dims sum away */
    kn_tensor *a = IN(0), *b = IN(1), *g2 = kn__ret(g);
    kn_tensor *a2 = a->ndim == 1 ? kn_unsqueeze(a, 0) : kn__ret(a);
    kn_tensor *b2 = b->ndim == 1 ? kn_unsqueeze(b, 1) : kn__ret(b);
    if (a->ndim == 1) g2 = kn_unsqueeze(g2, g2 ? g2->ndim - (b->ndim == 1 ? 0 : 1) : 0);
    if (b->ndim == 1) g2 = kn_unsqueeze(g2, g2 ? g2->ndim : 0);
    if (!a2 || !b2 || !g2) return -1;
    if (NEED(0)) {
        kn_tensor *ga = kn__sum_to(kn_matmul(g2, kn_transpose(b2, -1, -2)), a2->shape, a2->ndim);
        SET(0, kn_reshape(ga, a->shape, a->ndim));
    }
    if (NEED(1)) {
        kn_tensor *gb = kn__sum_to(kn_matmul(kn_transpose(a2, -1, -2), g2), b2->shape, b2->ndim);
        SET(1, kn_reshape(gb, b->shape, b->ndim));
    }
    return 0;
}
RULE(linear) {  /* in = {x, w, b}: y = x wT + b */
    kn_tensor *x = IN(0), *w = IN(1);
    int64_t out_f = w->shape[0], in_f = w->shape[1];
    SET(0, kn_matmul(g, w));
    if (NEED(1) || NEED(2)) {
        kn_tensor *g2 = kn_reshape(g, KN_SHAPE(-1, out_f));
        SET(1, kn_matmul(kn_transpose(g2, 0, 1), kn_reshape(x, KN_SHAPE(-1, in_f))));
        if (n->nin > 2) SET(2, kn_sum(g2, KN_DIMS(0), false));
    }
    return 0;
}
RULE(softmax) {  /* p.i[0] = dim */
    int dim = (int)n->p.i[0];
    kn_tensor *s = kn_sum(kn_mul(g, OUT), &dim, 1, true);
    SET(0, kn_mul(OUT, kn_sub(g, s)));
    return 0;
}
RULE(log_softmax) {
    int dim = (int)n->p.i[0];
    SET(0, kn_sub(g, kn_mul(kn_exp(OUT), kn_sum(g, &dim, 1, true))));
    return 0;
}
RULE(layer_norm) {  /* p.i[0] = normalized ndim, p.d[0] = eps; in = {x, w, b} */
    kn_tensor *x = IN(0), *w = n->nin > 1 ? IN(1) : NULL;
    int k = (int)n->p.i[0], dims[KN_MAX_DIMS];
    for (int i = 0; i < k; i++) dims[i] = x->ndim - k + i;
    kn_tensor *mean = kn_mean(x, dims, k, true);
    kn_tensor *rstd = kn_rsqrt(kn_add_scalar(kn_var(x, dims, k, 0, true), n->p.d[0]));
    kn_tensor *xhat = kn_mul(kn_sub(x, mean), rstd);
    kn_tensor *gx = w ? kn_mul(g, w) : kn__ret(g);
    kn_tensor *t = kn_sub(kn_sub(gx, kn_mean(gx, dims, k, true)),
                          kn_mul(xhat, kn_mean(kn_mul(gx, xhat), dims, k, true)));
    SET(0, kn_mul(rstd, t));
    if (w) SET(1, kn_mul(g, xhat));
    if (n->nin > 2 && IN(2)) SET(2, kn__ret(g));
    return 0;
}
RULE(conv2d) {  /* p.i = {stride, padding}; in = {x, w, b} */
    int st = (int)n->p.i[0], pad = (int)n->p.i[1];
    kn_tensor *x = IN(0), *w = IN(1);
    SET(0, kn__conv2d_grad_input(g, w, x->shape, st, pad));
    SET(1, kn__conv2d_grad_weight(g, x, w->shape, st, pad));
    if (n->nin > 2 && IN(2)) SET(2, kn_sum(g, KN_DIMS(0, 2, 3), false));
    return 0;
}
RULE(max_pool2d) {  /* p.i = {kernel, stride, padding} */
    SET(0, kn__max_pool2d_grad(g, IN(0), (int)n->p.i[0], (int)n->p.i[1], (int)n->p.i[2]));
    return 0;
}
/* Upstream gradient per row: p.i[0] = reduction (0 mean, 1 sum, 2 none). */
static kn_tensor *loss_rows(kn_node *n, kn_tensor *g, kn_tensor *x) {
    if (n->p.i[0] == 2) return kn_unsqueeze(g, 1);
    return n->p.i[0] == 0 ? kn_div(g, kn__count(x, 1)) : kn__ret(g);
}
RULE(cross_entropy) {  /* in = {logits [N,C], target [N]} */
    kn_tensor *x = IN(0);
    kn_tensor *d = kn_sub(kn_softmax(x, 1), kn_one_hot(IN(1), x->shape[1], x->dtype));
    SET(0, kn_mul(d, loss_rows(n, g, x)));
    return 0;
}
#define UNARY_SAVES_OUT(name) [KN_OP_##name] = {d_##name, 0, true}
#define SAVES(name, mask) [KN_OP_##name] = {d_##name, mask, false}
const kn_derivative kn_derivatives[KN_OP_COUNT] = {
    UNARY_SAVES_OUT(exp), SAVES(log, 1), UNARY_SAVES_OUT(sqrt), UNARY_SAVES_OUT(rsqrt),
    UNARY_SAVES_OUT(tanh), UNARY_SAVES_OUT(sigmoid), SAVES(sin, 1), SAVES(cos, 1), SAVES(erf, 1),
    SAVES(gelu, 1), SAVES(gelu_tanh, 1), SAVES(neg, 0), SAVES(abs, 1), UNARY_SAVES_OUT(relu),
    SAVES(clamp, 1), SAVES(add, 0), SAVES(sub, 0), SAVES(mul, 3), SAVES(div, 3), SAVES(pow, 3),
    SAVES(maximum, 3), SAVES(minimum, 3), SAVES(where, 1), SAVES(cast, 0),
    SAVES(sum, 0), SAVES(mean, 0), [KN_OP_max] = {d_max, 1, true}, [KN_OP_min] = {d_min, 1, true},
    SAVES(var, 1), [KN_OP_logsumexp] = {d_logsumexp, 1, true},
    SAVES(reshape, 0), SAVES(permute, 0), SAVES(slice, 0), SAVES(expand, 0), SAVES(contiguous, 0),
    SAVES(cat, 0), SAVES(gather, 2), SAVES(index_select, 2), SAVES(scatter_add, 2),
    SAVES(index_add, 2), SAVES(matmul, 3), SAVES(linear, 3), UNARY_SAVES_OUT(softmax),
    UNARY_SAVES_OUT(log_softmax), SAVES(layer_norm, 7), SAVES(cross_entropy, 3),
    SAVES(conv2d, 3), SAVES(max_pool2d, 1),
};
