/* conv2d and max_pool2d, forward and backward: against plain loops in
 * double, by finite differences in f64, the oneDNN f32 path against the f64
 * loops, the primitive cache under eviction and threads, and every error. */
#include "helpers.h"
#include "../eager/conv.h"
#include <math.h>
#include <pthread.h>
#include <string.h>

KN_SUITE(conv, 99);

#define EXPECT_ERRS(expr, ...)                                                     \
    do {                                                                          \
        kn_clear_error();                                                         \
        cr_assert_null((expr), #expr " should fail");                             \
        cr_assert(kn_last_error(), #expr " set no error");                        \
        const char *want_[] = {__VA_ARGS__};                                      \
        for (size_t i_ = 0; i_ < sizeof want_ / sizeof *want_; i_++)              \
            cr_assert(strstr(kn_last_error(), want_[i_]), "message '%s' lacks '%s'", \
                      kn_last_error(), want_[i_]);                                \
    } while (0)

/* ---- reference loops in double ---- */

/* t's values in C order, as a malloc'd array. */
static double *vals(const kn_tensor *t) {
    int64_t n = kn_numel(t);
    double *v = malloc((size_t)(n + 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = at(t, i);
    return v;
}

/* An f64 tensor of shape [a,b,c,d] that takes ownership of v. */
static kn_tensor *wrap(double *v, int64_t a, int64_t b, int64_t c, int64_t d) {
    kn_tensor *t = kn_from_data(v, KN_SHAPE(a, b, c, d), KN_F64);
    free(v);
    return t;
}

typedef struct { int64_t n, c, h, w, o, kh, kw, oh, ow; int s, p; } geo;

static geo geo_of(const int64_t *xs, const int64_t *ws, int s, int p) {
    return (geo){xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3],
                 (xs[2] + 2 * p - ws[2]) / s + 1, (xs[3] + 2 * p - ws[3]) / s + 1, s, p};
}

/* Calls body for every (n, o, oh, ow, c, ki, kj) with an in-bounds input
 * position, with X = flat x index, W = flat w index, Y = flat y index. */
#define FOR_TAPS(G, body)                                                         \
    for (int64_t n = 0; n < G.n; n++)                                             \
        for (int64_t o = 0; o < G.o; o++)                                         \
            for (int64_t oh = 0; oh < G.oh; oh++)                                 \
                for (int64_t ow = 0; ow < G.ow; ow++)                             \
                    for (int64_t c = 0; c < G.c; c++)                             \
                        for (int64_t ki = 0; ki < G.kh; ki++)                     \
                            for (int64_t kj = 0; kj < G.kw; kj++) {               \
                                int64_t ih = oh * G.s - G.p + ki;                 \
                                int64_t iw = ow * G.s - G.p + kj;                 \
                                if (ih < 0 || ih >= G.h || iw < 0 || iw >= G.w)   \
                                    continue;                                     \
                                int64_t X = ((n * G.c + c) * G.h + ih) * G.w + iw; \
                                int64_t W = ((o * G.c + c) * G.kh + ki) * G.kw + kj; \
                                int64_t Y = ((n * G.o + o) * G.oh + oh) * G.ow + ow; \
                                body;                                             \
                            }

static kn_tensor *ref_conv(kn_tensor *x, kn_tensor *w, kn_tensor *b, int s, int p) {
    geo g = geo_of(kn_shape(x), kn_shape(w), s, p);
    double *xv = vals(x), *wv = vals(w), *y = calloc((size_t)(g.n * g.o * g.oh * g.ow + 1), 8);
    FOR_TAPS(g, y[Y] += xv[X] * wv[W]);
    if (b)
        for (int64_t i = 0; i < g.n * g.o * g.oh * g.ow; i++) y[i] += at(b, i / (g.oh * g.ow) % g.o);
    free(xv);
    free(wv);
    return wrap(y, g.n, g.o, g.oh, g.ow);
}

static kn_tensor *ref_grad_input(kn_tensor *gy, kn_tensor *w, const int64_t *xs, int s, int p) {
    geo g = geo_of(xs, kn_shape(w), s, p);
    double *gv = vals(gy), *wv = vals(w), *dx = calloc((size_t)(g.n * g.c * g.h * g.w + 1), 8);
    FOR_TAPS(g, dx[X] += gv[Y] * wv[W]);
    free(gv);
    free(wv);
    return wrap(dx, g.n, g.c, g.h, g.w);
}

static kn_tensor *ref_grad_weight(kn_tensor *gy, kn_tensor *x, const int64_t *ws, int s, int p) {
    geo g = geo_of(kn_shape(x), ws, s, p);
    double *gv = vals(gy), *xv = vals(x), *dw = calloc((size_t)(g.o * g.c * g.kh * g.kw + 1), 8);
    FOR_TAPS(g, dw[W] += gv[Y] * xv[X]);
    free(gv);
    free(xv);
    return wrap(dw, g.o, g.c, g.kh, g.kw);
}

/* Max pooling with PyTorch's argmax rule: the first strict maximum, or the
 * last NaN. *arg gets the flat input index per output (may be NULL). */
static double *pool_scan(kn_tensor *x, int k, int s, int p, int64_t *oh_, int64_t *ow_,
                         int64_t **arg) {
    const int64_t *xs = kn_shape(x);
    int64_t OH = (xs[2] + 2 * p - k) / s + 1, OW = (xs[3] + 2 * p - k) / s + 1;
    int64_t planes = xs[0] * xs[1], H = xs[2], W = xs[3];
    double *xv = vals(x), *y = malloc((size_t)(planes * OH * OW + 1) * 8);
    int64_t *a = malloc((size_t)(planes * OH * OW + 1) * 8);
    for (int64_t pl = 0; pl < planes; pl++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                double m = -INFINITY;
                int64_t best = -1;
                for (int64_t ih = oh * s - p; ih < oh * s - p + k; ih++)
                    for (int64_t iw = ow * s - p; iw < ow * s - p + k; iw++) {
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        int64_t i = (pl * H + ih) * W + iw;
                        if (best < 0 || xv[i] > m || isnan(xv[i])) m = xv[i], best = i;
                    }
                y[(pl * OH + oh) * OW + ow] = m;
                a[(pl * OH + oh) * OW + ow] = best;
            }
    free(xv);
    *oh_ = OH, *ow_ = OW;
    if (arg) *arg = a;
    else free(a);
    return y;
}

static kn_tensor *ref_pool(kn_tensor *x, int k, int s, int p) {
    int64_t OH, OW;
    double *y = pool_scan(x, k, s, p, &OH, &OW, NULL);
    return wrap(y, kn_shape(x)[0], kn_shape(x)[1], OH, OW);
}

static kn_tensor *ref_pool_grad(kn_tensor *gy, kn_tensor *x, int k, int s, int p) {
    int64_t OH, OW, *arg;
    free(pool_scan(x, k, s, p, &OH, &OW, &arg));
    double *gv = vals(gy), *dx = calloc((size_t)(kn_numel(x) + 1), 8);
    for (int64_t i = 0; i < kn_numel(gy); i++) dx[arg[i]] += gv[i];
    free(gv);
    free(arg);
    const int64_t *xs = kn_shape(x);
    return wrap(dx, xs[0], xs[1], xs[2], xs[3]);
}

/* ---- conv cases ---- */

typedef struct { int64_t n, c, h, w, o, kh, kw; int s, p; bool bias; } conv_case;
static const conv_case CASES[] = {
    {2, 3, 7, 9, 4, 3, 3, 1, 1, true},    /* same padding, non-square image */
    {1, 1, 5, 5, 2, 1, 1, 1, 0, false},   /* 1x1 kernel */
    {3, 2, 8, 6, 5, 5, 5, 2, 2, true},    /* 5x5, stride 2, padding 2 */
    {2, 4, 10, 7, 3, 3, 3, 2, 0, false},  /* stride 2, odd sizes: rows left over */
    {1, 3, 6, 6, 2, 3, 3, 2, 1, true},
    {2, 2, 9, 11, 3, 5, 5, 1, 2, false},
    {4, 16, 12, 12, 8, 3, 3, 1, 1, true}, /* wider channels */
    {2, 3, 6, 8, 2, 2, 3, 1, 1, true},    /* non-square kernel */
    {1, 2, 3, 3, 2, 3, 3, 3, 0, true},    /* kernel fills the input: 1x1 output */
};
#define NCASES (sizeof CASES / sizeof *CASES)

typedef struct { kn_tensor *x, *w, *b; } conv_args;

static conv_args make_args(const conv_case *k, kn_dtype dt) {
    return (conv_args){kn_randn(KN_SHAPE(k->n, k->c, k->h, k->w), dt),
                       kn_randn(KN_SHAPE(k->o, k->c, k->kh, k->kw), dt),
                       k->bias ? kn_randn(KN_SHAPE(k->o), dt) : NULL};
}

static void check_forward(kn_dtype dt, double tol) {
    for (size_t i = 0; i < NCASES; i++) {
        const conv_case *k = &CASES[i];
        conv_args a = make_args(k, dt);
        kn_tensor *want = ref_conv(a.x, a.w, a.b, k->s, k->p);
        for (int rep = 0; rep < 2; rep++) {  /* the second call hits the primitive cache */
            kn_tensor *y = kn_conv2d(a.x, a.w, a.b, k->s, k->p);
            cr_assert(y, "case %zu: %s", i, kn_last_error());
            cr_assert_eq(kn_dtype_of(y), dt);
            assert_close(y, want, tol, tol);
        }
    }
}

Test(conv, forward_f32_against_loops) {
    check_forward(KN_F32, 1e-4);
}

Test(conv, forward_f64_against_loops) {
    check_forward(KN_F64, 1e-12);
}

Test(conv, forward_non_contiguous_inputs) {
    for (int f = 0; f < 2; f++) {
        kn_dtype dt = f ? KN_F64 : KN_F32;
        /* x stored NHWC and viewed as NCHW; w a transposed view; b a strided slice */
        kn_tensor *xs = kn_randn(KN_SHAPE(2, 7, 6, 3), dt);
        kn_tensor *x = kn_permute(xs, KN_DIMS(0, 3, 1, 2));
        kn_tensor *w = kn_transpose(kn_randn(KN_SHAPE(3, 4, 3, 3), dt), 0, 1);
        kn_tensor *b = kn_slice(kn_randn(KN_SHAPE(8), dt), 0, 0, 8, 2);
        cr_assert(!kn_is_contiguous(x) && !kn_is_contiguous(w) && !kn_is_contiguous(b));
        kn_tensor *y = kn_conv2d(x, w, b, 1, 1);
        cr_assert(y, "%s", kn_last_error());
        assert_close(y, ref_conv(x, w, b, 1, 1), 1e-4, 1e-4);
    }
}

Test(conv, grads_against_loops) {
    for (int f = 0; f < 2; f++) {
        kn_dtype dt = f ? KN_F64 : KN_F32;
        double tol = f ? 1e-12 : 1e-4;
        for (size_t i = 0; i < NCASES; i++) {
            const conv_case *k = &CASES[i];
            conv_args a = make_args(k, dt);
            kn_tensor *y = kn_conv2d(a.x, a.w, NULL, k->s, k->p);
            kn_tensor *gy = kn_randn(kn_shape(y), 4, dt);
            kn_tensor *gx = kn__conv2d_grad_input(gy, a.w, kn_shape(a.x), k->s, k->p);
            kn_tensor *gw = kn__conv2d_grad_weight(gy, a.x, kn_shape(a.w), k->s, k->p);
            cr_assert(gx && gw, "case %zu: %s", i, kn_last_error());
            assert_close(gx, ref_grad_input(gy, a.w, kn_shape(a.x), k->s, k->p), tol, tol);
            assert_close(gw, ref_grad_weight(gy, a.x, kn_shape(a.w), k->s, k->p), tol, tol);
        }
    }
}

/* The oneDNN f32 passes agree with the f64 loops run on the same values. */
Test(conv, f32_onednn_matches_f64_loops) {
    for (size_t i = 0; i < NCASES; i++) {
        const conv_case *k = &CASES[i];
        conv_args a = make_args(k, KN_F32);
        kn_tensor *x64 = kn_cast(a.x, KN_F64), *w64 = kn_cast(a.w, KN_F64);
        kn_tensor *b64 = a.b ? kn_cast(a.b, KN_F64) : NULL;
        kn_tensor *y = kn_conv2d(a.x, a.w, a.b, k->s, k->p);
        kn_tensor *gy = kn_randn(kn_shape(y), 4, KN_F32), *gy64 = kn_cast(gy, KN_F64);
        assert_close(y, kn_conv2d(x64, w64, b64, k->s, k->p), 1e-4, 1e-4);
        assert_close(kn__conv2d_grad_input(gy, a.w, kn_shape(a.x), k->s, k->p),
                     kn__conv2d_grad_input(gy64, w64, kn_shape(a.x), k->s, k->p), 1e-4, 1e-4);
        assert_close(kn__conv2d_grad_weight(gy, a.x, kn_shape(a.w), k->s, k->p),
                     kn__conv2d_grad_weight(gy64, x64, kn_shape(a.w), k->s, k->p), 1e-4, 1e-4);
    }
}

/* f32 autograd end to end: kn_backward fills x, w and b grads. */
Test(conv, backward_f32_through_autograd) {
    const conv_case *k = &CASES[2];
    conv_args a = make_args(k, KN_F32);
    kn_set_requires_grad(a.x, true);
    kn_set_requires_grad(a.w, true);
    kn_set_requires_grad(a.b, true);
    kn_tensor *y = kn_conv2d(a.x, a.w, a.b, k->s, k->p);
    cr_assert(kn_requires_grad(y));
    kn_tensor *gy = kn_randn(kn_shape(y), 4, KN_F32);
    cr_assert_eq(kn_backward(y, gy), 0, "%s", kn_last_error());
    assert_close(kn_grad(a.x), ref_grad_input(gy, a.w, kn_shape(a.x), k->s, k->p), 1e-4, 1e-4);
    assert_close(kn_grad(a.w), ref_grad_weight(gy, a.x, kn_shape(a.w), k->s, k->p), 1e-4, 1e-4);
    kn_tensor *gb = kn_grad(a.b);
    for (int64_t o = 0; o < k->o; o++) {
        double want = 0;
        for (int64_t i = 0; i < kn_numel(gy); i++)
            if (i / (kn_shape(gy)[2] * kn_shape(gy)[3]) % k->o == o) want += at(gy, i);
        cr_assert(fabs(at(gb, o) - want) <= 1e-4 * (1 + fabs(want)), "db[%lld]", (long long)o);
    }
    kn_zero_grad(a.x);
    kn_zero_grad(a.w);
    kn_zero_grad(a.b);
}

typedef struct { int s, p, k; } op_ctx;

static kn_tensor *conv_fn(void *ctx, kn_tensor *const *in) {
    const op_ctx *c = ctx;
    return kn_conv2d(in[0], in[1], in[2], c->s, c->p);
}

static kn_tensor *conv_nobias_fn(void *ctx, kn_tensor *const *in) {
    const op_ctx *c = ctx;
    return kn_conv2d(in[0], in[1], NULL, c->s, c->p);
}

Test(conv, gradcheck_conv2d) {
    static const conv_case small[] = {
        {2, 2, 5, 4, 3, 3, 3, 1, 1, true},
        {1, 3, 6, 5, 2, 3, 2, 2, 0, true},
        {2, 1, 5, 5, 2, 3, 3, 2, 2, true},
    };
    for (size_t i = 0; i < sizeof small / sizeof *small; i++) {
        const conv_case *k = &small[i];
        conv_args a = make_args(k, KN_F64);
        kn_tensor *in[] = {kn_set_requires_grad(a.x, true), kn_set_requires_grad(a.w, true),
                           kn_set_requires_grad(a.b, true)};
        op_ctx c = {k->s, k->p, 0};
        cr_assert(kn_gradcheck(conv_fn, &c, in, 3, 1e-6, 1e-6, 1e-5), "case %zu: %s", i,
                  kn_last_error());
        cr_assert(kn_gradcheck(conv_nobias_fn, &c, in, 2, 1e-6, 1e-6, 1e-5), "case %zu: %s", i,
                  kn_last_error());
    }
}

/* Second order through the grad ops is not supported: they are recorded
 * as ops with no rule, so their results carry no node. */
Test(conv, grad_ops_record_without_rule) {
    kn_tensor *w = kn_set_requires_grad(kn_randn(KN_SHAPE(2, 1, 3, 3), KN_F64), true);
    kn_tensor *g = kn_randn(KN_SHAPE(1, 2, 4, 4), KN_F64);
    kn_tensor *gx = kn__conv2d_grad_input(g, w, (const int64_t[]){1, 1, 4, 4}, 1, 1);
    cr_assert(gx, "%s", kn_last_error());
    cr_assert(!kn_requires_grad(gx));
}

Test(conv, empty_shapes) {
    for (int f = 0; f < 2; f++) {
        kn_dtype dt = f ? KN_F64 : KN_F32;
        kn_tensor *y = kn_conv2d(kn_zeros(KN_SHAPE(0, 2, 5, 5), dt),
                                 kn_ones(KN_SHAPE(3, 2, 3, 3), dt), NULL, 1, 0);
        cr_assert(y, "%s", kn_last_error());
        cr_assert(kn_shape(y)[0] == 0 && kn_shape(y)[1] == 3 && kn_shape(y)[2] == 3);
        y = kn_conv2d(kn_ones(KN_SHAPE(2, 2, 5, 5), dt), kn_ones(KN_SHAPE(0, 2, 3, 3), dt),
                      kn_zeros(KN_SHAPE(0), dt), 1, 0);
        cr_assert(y && kn_numel(y) == 0 && kn_shape(y)[1] == 0, "%s", kn_last_error());
        /* no input channels: the output is the bias */
        y = kn_conv2d(kn_ones(KN_SHAPE(2, 0, 5, 5), dt), kn_ones(KN_SHAPE(2, 0, 3, 3), dt),
                      kn_cast(TF64(KN_SHAPE(2), 1.5, -2), dt), 1, 1);
        cr_assert(y, "%s", kn_last_error());
        for (int64_t i = 0; i < kn_numel(y); i++)
            cr_assert_eq(at(y, i), i < 25 || (i >= 50 && i < 75) ? 1.5 : -2);
        /* an empty image with padding: the output is the bias again */
        y = kn_conv2d(kn_ones(KN_SHAPE(1, 2, 0, 3), dt), kn_ones(KN_SHAPE(2, 2, 1, 1), dt),
                      kn_cast(TF64(KN_SHAPE(2), 1.5, -2), dt), 1, 1);
        cr_assert(y && kn_shape(y)[2] == 2 && kn_shape(y)[3] == 5, "%s", kn_last_error());
        for (int64_t i = 0; i < kn_numel(y); i++) cr_assert_eq(at(y, i), i < 10 ? 1.5 : -2);
        kn_tensor *gx = kn__conv2d_grad_input(kn_ones(kn_shape(y), 4, dt),
                                              kn_ones(KN_SHAPE(2, 2, 1, 1), dt),
                                              (const int64_t[]){1, 2, 0, 3}, 1, 1);
        cr_assert(gx && kn_numel(gx) == 0, "%s", kn_last_error());
        /* pooling an empty image: windows of padding only, and no gradient */
        kn_tensor *xe = kn_zeros(KN_SHAPE(1, 2, 0, 4), dt);
        kn_tensor *pe = kn_max_pool2d(xe, 2, 2, 1);
        cr_assert(pe && kn_shape(pe)[2] == 1 && kn_shape(pe)[3] == 3, "%s", kn_last_error());
        cr_assert(at(pe, 0) == -INFINITY);
        kn_tensor *ge = kn__max_pool2d_grad(kn_ones(kn_shape(pe), 4, dt), xe, 2, 2, 1);
        cr_assert(ge && kn_numel(ge) == 0, "%s", kn_last_error());
        kn_tensor *gw = kn__conv2d_grad_weight(kn_zeros(KN_SHAPE(0, 3, 3, 3), dt),
                                               kn_zeros(KN_SHAPE(0, 2, 5, 5), dt),
                                               (const int64_t[]){3, 2, 3, 3}, 1, 0);
        cr_assert(gw && kn_numel(gw) == 54, "%s", kn_last_error());
        for (int64_t i = 0; i < 54; i++) cr_assert_eq(at(gw, i), 0);
    }
}

/* More shapes than the cache holds: evicted primitives are rebuilt. */
Test(conv, cache_eviction) {
    for (int round = 0; round < 2; round++)
        for (int64_t h = 3; h < 3 + 70; h += 1) {
            kn_pool_push();
            kn_tensor *x = kn_randn(KN_SHAPE(1, 2, h, 3), KN_F32);
            kn_tensor *w = kn_randn(KN_SHAPE(2, 2, 3, 3), KN_F32);
            kn_tensor *y = kn_conv2d(x, w, NULL, 1, 1);
            cr_assert(y, "%s", kn_last_error());
            if (h % 17 == 0) assert_close(y, ref_conv(x, w, NULL, 1, 1), 1e-4, 1e-4);
            kn_pool_pop();
        }
}

/* Threads share cached primitives (including one being built by another). */
typedef struct { kn_tensor *x, *w, *want; int bad; } thread_arg;

static void *conv_thread(void *p) {
    thread_arg *t = p;
    kn_pool_push();
    for (int i = 0; i < 20; i++) {
        kn_tensor *y = kn_conv2d(t->x, t->w, NULL, 2, 1);
        for (int64_t j = 0; y && j < kn_numel(y); j++)
            if (fabs(at(y, j) - at(t->want, j)) > 1e-4) t->bad++;
        if (!y) t->bad++;
    }
    kn_pool_pop();
    return NULL;
}

Test(conv, threads_share_the_cache) {
    kn_tensor *x = kn_randn(KN_SHAPE(3, 4, 13, 10), KN_F32);
    kn_tensor *w = kn_randn(KN_SHAPE(5, 4, 3, 3), KN_F32);
    thread_arg args[4];
    pthread_t th[4];
    kn_tensor *want = ref_conv(x, w, NULL, 2, 1);
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){x, w, want, 0};
        pthread_create(&th[i], NULL, conv_thread, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(args[i].bad, 0, "thread %d", i);
    }
}

Test(conv, conv2d_errors) {
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3, 5, 5), KN_F32);
    kn_tensor *w = kn_zeros(KN_SHAPE(4, 3, 3, 3), KN_F32);
    EXPECT_ERRS(kn_conv2d(NULL, w, NULL, 1, 0), "kn_conv2d", "NULL");
    EXPECT_ERRS(kn_conv2d(x, NULL, NULL, 1, 0), "kn_conv2d", "NULL");
    EXPECT_ERRS(kn_conv2d(kn_zeros(KN_SHAPE(3, 5, 5), KN_F32), w, NULL, 1, 0), "kn_conv2d",
               "x must be 4-D", "[3,5,5]");
    EXPECT_ERRS(kn_conv2d(x, kn_zeros(KN_SHAPE(4, 3, 3), KN_F32), NULL, 1, 0), "kn_conv2d",
               "w must be 4-D", "[4,3,3]");
    EXPECT_ERRS(kn_conv2d(x, kn_zeros(KN_SHAPE(4, 2, 3, 3), KN_F32), NULL, 1, 0), "kn_conv2d",
               "[2,3,5,5]", "[4,2,3,3]", "channels");
    EXPECT_ERRS(kn_conv2d(x, kn_zeros(KN_SHAPE(4, 3, 6, 3), KN_F32), NULL, 1, 0), "kn_conv2d",
               "larger than the padded input", "[4,3,6,3]", "[2,3,5,5]");
    EXPECT_ERRS(kn_conv2d(x, kn_zeros(KN_SHAPE(4, 3, 9, 3), KN_F32), NULL, 1, 1), "kn_conv2d",
               "larger than the padded input 7x7");
    EXPECT_ERRS(kn_conv2d(x, kn_zeros(KN_SHAPE(4, 3, 0, 3), KN_F32), NULL, 1, 1), "kn_conv2d",
               "at least 1x1");
    EXPECT_ERRS(kn_conv2d(x, w, NULL, 0, 0), "kn_conv2d", "stride", "[2,3,5,5]", "[4,3,3,3]");
    EXPECT_ERRS(kn_conv2d(x, w, NULL, -1, 0), "kn_conv2d", "stride");
    EXPECT_ERRS(kn_conv2d(x, w, NULL, 1, -1), "kn_conv2d", "padding", "[2,3,5,5]");
    EXPECT_ERRS(kn_conv2d(x, w, kn_zeros(KN_SHAPE(3), KN_F32), 1, 0), "kn_conv2d", "b must be",
               "[3]", "[4,3,3,3]");
    EXPECT_ERRS(kn_conv2d(x, w, kn_zeros(KN_SHAPE(1, 4), KN_F32), 1, 0), "kn_conv2d", "[1,4]");
    EXPECT_ERRS(kn_conv2d(kn_zeros(KN_SHAPE(2, 3, 5, 5), KN_I64), w, NULL, 1, 0), "kn_conv2d",
               "i64", "f32 or f64");
    EXPECT_ERRS(kn_conv2d(x, kn_zeros(KN_SHAPE(4, 3, 3, 3), KN_F64), NULL, 1, 0), "kn_conv2d",
               "w", "f64", "f32");
    EXPECT_ERRS(kn_conv2d(x, w, kn_zeros(KN_SHAPE(4), KN_F64), 1, 0), "kn_conv2d", "b", "f64");
    /* gradient ops check the gradient's shape */
    EXPECT_ERRS(kn__conv2d_grad_input(kn_zeros(KN_SHAPE(2, 4, 4, 3), KN_F32), w,
                                     (const int64_t[]){2, 3, 5, 5}, 1, 0),
               "kn_conv2d", "[2,4,4,3]", "[2,4,3,3]");
    EXPECT_ERRS(kn__conv2d_grad_weight(kn_zeros(KN_SHAPE(2, 4, 3, 3), KN_F64), x,
                                      (const int64_t[]){4, 3, 3, 3}, 1, 0),
               "kn_conv2d", "f32");
    /* a NULL input keeps the first error */
    kn_clear_error();
    kn_conv2d(x, w, NULL, 0, 0);
    cr_assert_null(kn_conv2d(kn_conv2d(x, w, NULL, 0, 0), w, NULL, 1, 0));
    cr_assert(strstr(kn_last_error(), "stride"), "%s", kn_last_error());
    kn_clear_error();
}

/* ---- max_pool2d ---- */

typedef struct { int64_t n, c, h, w; int k, s, p; } pool_case;
static const pool_case POOLS[] = {
    {2, 3, 8, 8, 2, 2, 0},   /* the classic 2x2 */
    {1, 2, 9, 7, 3, 2, 0},   /* overlapping windows */
    {2, 2, 7, 10, 3, 2, 1},  /* overlapping, padded */
    {1, 1, 5, 5, 3, 1, 1},   /* stride 1 */
    {2, 3, 6, 6, 4, 3, 2},   /* padding = kernel / 2 */
    {1, 2, 4, 5, 1, 1, 0},   /* kernel 1 */
    {3, 4, 11, 13, 5, 3, 2},
};
#define NPOOLS (sizeof POOLS / sizeof *POOLS)

Test(conv, max_pool2d_against_loops) {
    for (int f = 0; f < 2; f++) {
        kn_dtype dt = f ? KN_F64 : KN_F32;
        for (size_t i = 0; i < NPOOLS; i++) {
            const pool_case *k = &POOLS[i];
            kn_tensor *x = kn_randn(KN_SHAPE(k->n, k->c, k->h, k->w), dt);
            kn_tensor *y = kn_max_pool2d(x, k->k, k->s, k->p);
            cr_assert(y, "case %zu: %s", i, kn_last_error());
            assert_close(y, ref_pool(x, k->k, k->s, k->p), 0, 0);
            kn_tensor *gy = kn_randn(kn_shape(y), 4, dt);
            kn_tensor *gx = kn__max_pool2d_grad(gy, x, k->k, k->s, k->p);
            cr_assert(gx, "case %zu: %s", i, kn_last_error());
            assert_close(gx, ref_pool_grad(gy, x, k->k, k->s, k->p), 1e-6, 1e-6);
        }
    }
}

/* Ties go to the first maximum; many ties with small integers. Also a
 * non-contiguous input, and autograd end to end. */
Test(conv, max_pool2d_ties_and_views) {
    kn_tensor *r = kn_mul_scalar(kn_rand(KN_SHAPE(2, 9, 8, 3), KN_F32), 4);
    kn_tensor *ints = kn_cast(kn_cast(r, KN_I64), KN_F32);
    kn_tensor *x = kn_permute(ints, KN_DIMS(0, 3, 1, 2));  /* [2,3,9,8], strided */
    /* a strided leaf holding the same values */
    kn_tensor *xl = kn_set_requires_grad(kn_permute(kn_cast(ints, KN_F32), KN_DIMS(0, 3, 1, 2)), true);
    for (size_t i = 1; i < 3; i++) {
        const pool_case *k = &POOLS[i];
        kn_tensor *y = kn_max_pool2d(x, k->k, k->s, k->p);
        cr_assert(y, "%s", kn_last_error());
        assert_close(y, ref_pool(x, k->k, k->s, k->p), 0, 0);
        kn_tensor *gy = kn_randn(kn_shape(y), 4, KN_F32);
        assert_close(kn__max_pool2d_grad(gy, x, k->k, k->s, k->p),
                     ref_pool_grad(gy, x, k->k, k->s, k->p), 1e-6, 1e-6);
        /* through kn_backward on a leaf with the same values as ints */
        kn_tensor *yl = kn_max_pool2d(xl, k->k, k->s, k->p);
        cr_assert_eq(kn_backward(yl, gy), 0, "%s", kn_last_error());
        assert_close(kn_grad(xl), ref_pool_grad(gy, x, k->k, k->s, k->p), 1e-6, 1e-6);
        kn_zero_grad(xl);
    }
}

/* NaN wins its windows, as in PyTorch; its gradient goes to the last NaN.
 * -inf inputs stay -inf. */
Test(conv, max_pool2d_nan_and_inf) {
    for (int f = 0; f < 2; f++) {
        kn_dtype dt = f ? KN_F64 : KN_F32;
        double v[16];
        for (int i = 0; i < 16; i++) v[i] = i % 5;
        v[5] = NAN, v[6] = NAN, v[15] = -INFINITY, v[14] = -INFINITY, v[11] = -INFINITY,
        v[10] = -INFINITY;
        kn_tensor *x = kn_cast(kn_from_data(v, KN_SHAPE(1, 1, 4, 4), KN_F64), dt);
        kn_tensor *y = kn_max_pool2d(x, 2, 2, 0);
        cr_assert(y, "%s", kn_last_error());
        cr_assert(isnan(at(y, 0)) && isnan(at(y, 1)), "NaN windows");
        cr_assert_eq(at(y, 2), 4);
        cr_assert(at(y, 3) == -INFINITY);
        assert_close(y, ref_pool(x, 2, 2, 0), 0, 0);
        kn_tensor *gy = kn_ones(KN_SHAPE(1, 1, 2, 2), dt);
        kn_tensor *gx = kn__max_pool2d_grad(gy, x, 2, 2, 0);
        assert_close(gx, ref_pool_grad(gy, x, 2, 2, 0), 0, 0);
        cr_assert_eq(at(gx, 5), 1);  /* window 0: NaN at 5 only */
        cr_assert_eq(at(gx, 6), 1);  /* window 1: NaN at 6 only */
        cr_assert_eq(at(gx, 10), 1); /* all -inf: the first element */
        /* overlapping windows with stride 1 accumulate */
        kn_tensor *y3 = kn_max_pool2d(x, 3, 1, 1);
        assert_close(y3, ref_pool(x, 3, 1, 1), 0, 0);
        kn_tensor *g3 = kn_ones(kn_shape(y3), 4, dt);
        assert_close(kn__max_pool2d_grad(g3, x, 3, 1, 1), ref_pool_grad(g3, x, 3, 1, 1), 0, 0);
    }
}

static kn_tensor *pool_fn(void *ctx, kn_tensor *const *in) {
    const op_ctx *c = ctx;
    return kn_max_pool2d(in[0], c->k, c->s, c->p);
}

Test(conv, gradcheck_max_pool2d) {
    static const op_ctx cfg[] = {{2, 0, 2}, {2, 1, 3}, {1, 1, 3}, {3, 2, 4}};
    for (size_t i = 0; i < sizeof cfg / sizeof *cfg; i++) {
        kn_tensor *x = kn_set_requires_grad(kn_randn(KN_SHAPE(2, 2, 6, 5), KN_F64), true);
        op_ctx c = cfg[i];
        cr_assert(kn_gradcheck(pool_fn, &c, &x, 1, 1e-6, 1e-6, 1e-5), "cfg %zu: %s", i,
                  kn_last_error());
    }
}

Test(conv, max_pool2d_errors) {
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 3, 5, 6), KN_F32);
    EXPECT_ERRS(kn_max_pool2d(NULL, 2, 2, 0), "kn_max_pool2d", "NULL");
    EXPECT_ERRS(kn_max_pool2d(kn_zeros(KN_SHAPE(3, 5, 6), KN_F32), 2, 2, 0), "kn_max_pool2d",
               "4-D", "[3,5,6]");
    EXPECT_ERRS(kn_max_pool2d(kn_zeros(KN_SHAPE(2, 3, 5, 6), KN_I32), 2, 2, 0), "kn_max_pool2d",
               "i32", "[2,3,5,6]");
    EXPECT_ERRS(kn_max_pool2d(x, 0, 2, 0), "kn_max_pool2d", "kernel 0", "[2,3,5,6]");
    EXPECT_ERRS(kn_max_pool2d(x, 2, 0, 0), "kn_max_pool2d", "stride 0", "[2,3,5,6]");
    EXPECT_ERRS(kn_max_pool2d(x, 2, 2, -1), "kn_max_pool2d", "padding -1", "[2,3,5,6]");
    EXPECT_ERRS(kn_max_pool2d(x, 3, 1, 2), "kn_max_pool2d", "half the kernel", "[2,3,5,6]");
    EXPECT_ERRS(kn_max_pool2d(x, 6, 1, 0), "kn_max_pool2d", "larger than the padded input 5x6",
               "[2,3,5,6]");
    EXPECT_ERRS(kn__max_pool2d_grad(kn_zeros(KN_SHAPE(2, 3, 2, 2), KN_F32), x, 2, 2, 0),
               "kn_max_pool2d", "[2,3,2,2]", "[2,3,2,3]");
    EXPECT_ERRS(kn__max_pool2d_grad(kn_zeros(KN_SHAPE(2, 3, 2, 3), KN_F64), x, 2, 2, 0),
               "kn_max_pool2d", "f64");
    kn_clear_error();
}
