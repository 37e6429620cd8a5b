/* Eager conv2d and max_pool2d (NCHW), forward and backward. f32 convolution
 * runs on oneDNN (backends/cpu/onednn_conv.c); f64 and empty shapes use the
 * direct loops below, which the f64 gradient checks rely on. Pooling is our
 * own loop in both dtypes: oneDNN's max pooling does not propagate NaN as
 * PyTorch does, and it was at most about 1.5x faster than the loop below
 * (single thread, [64,32,28,28]). Every loop is parallel over planes. */
#include "conv.h"
#include "../core/autograd.h"
#include <math.h>
#include <string.h>

#define GRAIN_WORK (1 << 15) /* multiply-adds per task, roughly */

static const char *OP_CONV = "kn_conv2d", *OP_POOL = "kn_max_pool2d";

static int64_t grain_for(int64_t work_per_plane) {
    return work_per_plane >= GRAIN_WORK ? 1 : GRAIN_WORK / (work_per_plane > 0 ? work_per_plane : 1);
}

/* Output positions o in [*lo, *hi) whose input index o*s - p + k lies in [0, n). */
static void valid_range(int64_t n, int64_t nout, int s, int p, int64_t k, int64_t *lo,
                        int64_t *hi) {
    int64_t a = p - k, b = n - 1 + p - k;  /* need a <= o*s <= b */
    *lo = a <= 0 ? 0 : (a + s - 1) / s;
    *hi = b < 0 ? 0 : b / s + 1;
    if (*hi > nout) *hi = nout;
    if (*lo > *hi) *lo = *hi;
}

/* ---- geometry and argument checks ---- */

/* Fills g from x [N,C,H,W] and w [O,C,kh,kw] shapes; false with an error. */
static bool conv_geom(const char *op, const int64_t *xs, const int64_t *ws, int stride,
                      int padding, kn_conv_geom *g) {
    char a[KN_SHAPE_BUF], b[KN_SHAPE_BUF];
    kn__shape_str(xs, 4, a);
    kn__shape_str(ws, 4, b);
    if (stride < 1)
        return kn__error("%s: stride must be >= 1, got %d (x %s, w %s)", op, stride, a, b), false;
    if (padding < 0)
        return kn__error("%s: padding must be >= 0, got %d (x %s, w %s)", op, padding, a, b), false;
    if (xs[1] != ws[1])
        return kn__error("%s: x %s has %lld channels but w %s expects %lld", op, a,
                         (long long)xs[1], b, (long long)ws[1]), false;
    if (ws[2] < 1 || ws[3] < 1)
        return kn__error("%s: kernel of w %s must be at least 1x1", op, b), false;
    int64_t ph = xs[2] + 2 * (int64_t)padding, pw = xs[3] + 2 * (int64_t)padding;
    if (ws[2] > ph || ws[3] > pw)
        return kn__error("%s: kernel %lldx%lld of w %s is larger than the padded input "
                         "%lldx%lld of x %s (padding %d)", op, (long long)ws[2],
                         (long long)ws[3], b, (long long)ph, (long long)pw, a, padding), false;
    *g = (kn_conv_geom){.n = xs[0], .c = xs[1], .h = xs[2], .w = xs[3], .o = ws[0],
                        .kh = ws[2], .kw = ws[3], .oh = (ph - ws[2]) / stride + 1,
                        .ow = (pw - ws[3]) / stride + 1, .stride = stride, .pad = padding};
    return true;
}

static bool check_4d(const char *op, const char *name, const char *layout, const kn_tensor *t) {
    if (t->ndim == 4) return true;
    char s[KN_SHAPE_BUF];
    return kn__error("%s: %s must be 4-D %s, got %s", op, name, layout,
                     kn__shape_str(t->shape, t->ndim, s)), false;
}

static bool check_float(const char *op, const char *name, const kn_tensor *t, kn_dtype want) {
    if (t->dtype == want && kn__is_float(want)) return true;
    char s[KN_SHAPE_BUF];
    kn__shape_str(t->shape, t->ndim, s);
    if (!kn__is_float(want))
        return kn__error("%s: %s %s has dtype %s; f32 or f64 is needed", op, name, s,
                         kn_dtype_name(t->dtype)), false;
    return kn__error("%s: %s %s has dtype %s but the other operands are %s", op, name, s,
                     kn_dtype_name(t->dtype), kn_dtype_name(want)), false;
}

/* The dense version of t: a reference to kn__drop. */
static kn_tensor *dense(kn_tensor *t) { return t ? kn_contiguous(t) : NULL; }

/* ---- direct convolution loops (f64, and any dtype for empty shapes) ---- */

typedef struct {
    kn_conv_geom g;
    const void *a, *b, *bias;
    void *out;
} conv_job;

#define CONV_LOOPS(T)                                                                     \
    /* y[n,o] planes: bias, then each (c, ki, kj) tap added in turn. */                   \
    static void fwd_##T(void *ctx, int64_t p0, int64_t p1) {                              \
        const conv_job *j = ctx;                                                          \
        const kn_conv_geom *g = &j->g;                                                    \
        const T *x = j->a, *w = j->b, *bias = j->bias;                                    \
        for (int64_t pl = p0; pl < p1; pl++) {                                            \
            int64_t n = pl / g->o, o = pl % g->o;                                         \
            T *y = (T *)j->out + pl * g->oh * g->ow;                                      \
            for (int64_t i = 0; i < g->oh * g->ow; i++) y[i] = bias ? bias[o] : 0;        \
            for (int64_t c = 0; c < g->c; c++)                                            \
                for (int64_t ki = 0; ki < g->kh; ki++) {                                  \
                    int64_t h0, h1;                                                       \
                    valid_range(g->h, g->oh, g->stride, g->pad, ki, &h0, &h1);            \
                    for (int64_t kj = 0; kj < g->kw; kj++) {                              \
                        int64_t w0, w1;                                                   \
                        valid_range(g->w, g->ow, g->stride, g->pad, kj, &w0, &w1);        \
                        T wv = w[((o * g->c + c) * g->kh + ki) * g->kw + kj];             \
                        for (int64_t oh = h0; oh < h1; oh++) {                            \
                            const T *xr = x + ((n * g->c + c) * g->h + oh * g->stride -   \
                                               g->pad + ki) * g->w;                       \
                            T *yr = y + oh * g->ow;                                       \
                            for (int64_t ow = w0; ow < w1; ow++)                          \
                                yr[ow] += wv * xr[ow * g->stride + kj - g->pad];          \
                        }                                                                 \
                    }                                                                     \
                }                                                                         \
        }                                                                                 \
    }                                                                                     \
    /* dx[n,c] planes: each tap scatters dy back through the same windows. */             \
    static void bwd_data_##T(void *ctx, int64_t p0, int64_t p1) {                         \
        const conv_job *j = ctx;                                                          \
        const kn_conv_geom *g = &j->g;                                                    \
        const T *dy = j->a, *w = j->b;                                                    \
        for (int64_t pl = p0; pl < p1; pl++) {                                            \
            int64_t n = pl / g->c, c = pl % g->c;                                         \
            T *dx = (T *)j->out + pl * g->h * g->w;                                       \
            memset(dx, 0, (size_t)(g->h * g->w) * sizeof(T));                             \
            for (int64_t o = 0; o < g->o; o++)                                            \
                for (int64_t ki = 0; ki < g->kh; ki++) {                                  \
                    int64_t h0, h1;                                                       \
                    valid_range(g->h, g->oh, g->stride, g->pad, ki, &h0, &h1);            \
                    for (int64_t kj = 0; kj < g->kw; kj++) {                              \
                        int64_t w0, w1;                                                   \
                        valid_range(g->w, g->ow, g->stride, g->pad, kj, &w0, &w1);        \
                        T wv = w[((o * g->c + c) * g->kh + ki) * g->kw + kj];             \
                        for (int64_t oh = h0; oh < h1; oh++) {                            \
                            T *xr = dx + (oh * g->stride - g->pad + ki) * g->w;           \
                            const T *yr = dy + ((n * g->o + o) * g->oh + oh) * g->ow;     \
                            for (int64_t ow = w0; ow < w1; ow++)                          \
                                xr[ow * g->stride + kj - g->pad] += wv * yr[ow];          \
                        }                                                                 \
                    }                                                                     \
                }                                                                         \
        }                                                                                 \
    }                                                                                     \
    /* dw[o,c] planes: each tap is a dot product of dy and shifted x over n. */           \
    static void bwd_weights_##T(void *ctx, int64_t p0, int64_t p1) {                      \
        const conv_job *j = ctx;                                                          \
        const kn_conv_geom *g = &j->g;                                                    \
        const T *dy = j->a, *x = j->b;                                                    \
        for (int64_t pl = p0; pl < p1; pl++) {                                            \
            int64_t o = pl / g->c, c = pl % g->c;                                         \
            T *dw = (T *)j->out + pl * g->kh * g->kw;                                     \
            for (int64_t ki = 0; ki < g->kh; ki++) {                                      \
                int64_t h0, h1;                                                           \
                valid_range(g->h, g->oh, g->stride, g->pad, ki, &h0, &h1);                \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                  \
                    int64_t w0, w1;                                                       \
                    valid_range(g->w, g->ow, g->stride, g->pad, kj, &w0, &w1);            \
                    T acc = 0;                                                            \
                    for (int64_t n = 0; n < g->n; n++)                                    \
                        for (int64_t oh = h0; oh < h1; oh++) {                            \
                            const T *xr = x + ((n * g->c + c) * g->h + oh * g->stride -   \
                                               g->pad + ki) * g->w;                       \
                            const T *yr = dy + ((n * g->o + o) * g->oh + oh) * g->ow;     \
                            for (int64_t ow = w0; ow < w1; ow++)                          \
                                acc += yr[ow] * xr[ow * g->stride + kj - g->pad];         \
                        }                                                                 \
                    dw[ki * g->kw + kj] = acc;                                            \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }
CONV_LOOPS(float)
CONV_LOOPS(double)

/* One convolution pass into out (dense, shaped for kind). */
static int conv_run(const char *op, kn_conv_kind kind, const kn_conv_geom *g, kn_tensor *a,
                    kn_tensor *b, kn_tensor *bias, kn_tensor *out) {
    bool f32 = out->dtype == KN_F32;
    const void *pa = kn__ptr(a), *pb = kn__ptr(b), *pbias = bias ? kn__ptr(bias) : NULL;
    /* oneDNN rejects zero dims; the loops handle them */
    bool empty = g->n == 0 || g->c == 0 || g->o == 0 || g->h == 0 || g->w == 0;
    if (f32 && !empty)
        return kn__conv2d_f32(op, kind, g, pa, pb, pbias, (float *)kn__ptr(out));
    static const kn_range_fn loops[2][3] = {
        {fwd_double, bwd_data_double, bwd_weights_double},
        {fwd_float, bwd_data_float, bwd_weights_float},
    };
    conv_job j = {*g, pa, pb, pbias, kn__ptr(out)};
    int64_t taps = g->kh * g->kw * g->oh * g->ow;
    int64_t planes = kind == KN_CONV_FWD ? g->n * g->o : kind == KN_CONV_BWD_DATA ? g->n * g->c
                                                                                 : g->o * g->c;
    int64_t per = taps * (kind == KN_CONV_FWD ? g->c : kind == KN_CONV_BWD_DATA ? g->o : g->n);
    kn__parallel_for(planes, grain_for(per), loops[f32][kind], &j);
    return 0;
}

/* ---- conv2d ---- */

kn_tensor *kn_conv2d(kn_tensor *x, kn_tensor *w, kn_tensor *b, int stride, int padding) {
    KN_CHECK(OP_CONV, x);
    KN_CHECK(OP_CONV, w);
    if (!check_4d(OP_CONV, "x", "[N,C,H,W]", x) || !check_4d(OP_CONV, "w", "[O,C,kh,kw]", w) ||
        !check_float(OP_CONV, "x", x, x->dtype) || !check_float(OP_CONV, "w", w, x->dtype))
        return NULL;
    if (b) {
        char s[KN_SHAPE_BUF], ws[KN_SHAPE_BUF];
        if (!check_float(OP_CONV, "b", b, x->dtype)) return NULL;
        if (b->ndim != 1 || b->shape[0] != w->shape[0])
            return kn__error("%s: b must be [O] = [%lld] for w %s, got %s", OP_CONV,
                             (long long)w->shape[0], kn__shape_str(w->shape, 4, ws),
                             kn__shape_str(b->shape, b->ndim, s));
    }
    kn_conv_geom g;
    if (!conv_geom(OP_CONV, x->shape, w->shape, stride, padding, &g)) return NULL;
    kn_tensor *out = kn__alloc(KN_SHAPE(g.n, g.o, g.oh, g.ow), x->dtype);
    kn_tensor *xd = dense(x), *wd = dense(w), *bd = dense(b);
    int rc = out && xd && wd && (bd || !b) ? conv_run(OP_CONV, KN_CONV_FWD, &g, xd, wd, bd, out)
                                           : -1;
    kn__drop(xd);
    kn__drop(wd);
    kn__drop(bd);
    if (rc) {
        kn__drop(out);
        return NULL;
    }
    return kn__record(KN_OP_conv2d, out, (kn_tensor *[]){x, w, b}, b ? 3 : 2,
                      &(kn_params){.i = {stride, padding}});
}

/* Checks g against the output shape the geometry predicts. */
static bool check_grad(const char *op, const kn_tensor *g, const kn_conv_geom *geo) {
    if (!check_4d(op, "grad", "[N,O,OH,OW]", g)) return false;
    int64_t want[4] = {geo->n, geo->o, geo->oh, geo->ow};
    if (!memcmp(g->shape, want, sizeof want)) return true;
    char a[KN_SHAPE_BUF], b[KN_SHAPE_BUF];
    return kn__error("%s: grad has shape %s but the convolution output is %s", op,
                     kn__shape_str(g->shape, 4, a), kn__shape_str(want, 4, b)), false;
}

/* Shared body of the two gradient ops: other is w (grad input) or x (grad weight). */
static kn_tensor *conv_grad(const char *op, kn_op id, kn_conv_kind kind, kn_tensor *g,
                            kn_tensor *other, const int64_t *shape, int stride, int padding) {
    KN_CHECK(op, g);
    KN_CHECK(op, other);
    if (!shape) return kn__null_arg(op);
    bool data = kind == KN_CONV_BWD_DATA;
    const char *oname = data ? "w" : "x";
    if (!check_4d(op, oname, data ? "[O,C,kh,kw]" : "[N,C,H,W]", other) ||
        !check_float(op, "grad", g, g->dtype) || !check_float(op, oname, other, g->dtype))
        return NULL;
    kn_conv_geom geo;
    if (!conv_geom(op, data ? shape : other->shape, data ? other->shape : shape, stride, padding,
                   &geo) ||
        !check_grad(op, g, &geo))
        return NULL;
    kn_tensor *out = kn__alloc(shape, 4, g->dtype);
    kn_tensor *gd = dense(g), *od = dense(other);
    int rc = out && gd && od ? conv_run(op, kind, &geo, gd, od, NULL, out) : -1;
    kn__drop(gd);
    kn__drop(od);
    if (rc) {
        kn__drop(out);
        return NULL;
    }
    kn_params p = {.i = {stride, padding, shape[0], shape[1], shape[2], shape[3]}};
    return kn__record(id, out, (kn_tensor *[]){g, other}, 2, &p);
}

kn_tensor *kn__conv2d_grad_input(kn_tensor *g, kn_tensor *w, const int64_t *x_shape, int stride,
                                 int padding) {
    return conv_grad("kn_conv2d (grad input)", KN_OP_conv2d_grad_input, KN_CONV_BWD_DATA, g, w,
                     x_shape, stride, padding);
}

kn_tensor *kn__conv2d_grad_weight(kn_tensor *g, kn_tensor *x, const int64_t *w_shape, int stride,
                                  int padding) {
    return conv_grad("kn_conv2d (grad weight)", KN_OP_conv2d_grad_weight, KN_CONV_BWD_WEIGHTS, g,
                     x, w_shape, stride, padding);
}

/* ---- max_pool2d ---- */

typedef struct {
    int64_t h, w, oh, ow, k;
    int s, p;
    const void *x, *g;
    void *out;
} pool_job;

/* Forward: each kernel tap updates a whole output row with a branch-free
 * select, (v > m || v != v), which keeps NaN once seen, as PyTorch does.
 * Rows are short (often < 32), so the loop asks for 8-wide vectors without
 * interleaving, and strides 1 and 2 get constant-stride copies: together
 * about 3x faster than the plain loop at kernel 3, stride 1. Windows are
 * never all padding (padding <= kernel / 2) unless H or W is 0: -inf then. */
#define POOL_LOOPS(T, NEG_INF)                                                            \
    static inline __attribute__((always_inline)) void pool_plane_##T(                    \
        const pool_job *j, const T *x, T *y, const int s) {                               \
        for (int64_t oh = 0; oh < j->oh; oh++) {                                          \
            T *restrict yr = y + oh * j->ow;                                              \
            for (int64_t ow = 0; ow < j->ow; ow++) yr[ow] = NEG_INF;                      \
            for (int64_t ki = 0; ki < j->k; ki++) {                                       \
                int64_t ih = oh * s - j->p + ki;                                          \
                if (ih < 0 || ih >= j->h) continue;                                       \
                for (int64_t kj = 0; kj < j->k; kj++) {                                   \
                    int64_t w0, w1;                                                       \
                    valid_range(j->w, j->ow, s, j->p, kj, &w0, &w1);                      \
                    const T *restrict xr = x + ih * j->w;                                 \
                    int64_t off = kj - j->p;                                              \
                    _Pragma("clang loop vectorize_width(8) interleave_count(1)")          \
                    for (int64_t ow = w0; ow < w1; ow++) {                                \
                        T v = xr[ow * s + off], m = yr[ow];                               \
                        yr[ow] = (v > m || v != v) ? v : m;                               \
                    }                                                                     \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    static void pool_fwd_##T(void *ctx, int64_t p0, int64_t p1) {                         \
        const pool_job *j = ctx;                                                          \
        for (int64_t pl = p0; pl < p1; pl++) {                                            \
            const T *x = (const T *)j->x + pl * j->h * j->w;                              \
            T *y = (T *)j->out + pl * j->oh * j->ow;                                      \
            if (j->s == 1) pool_plane_##T(j, x, y, 1);                                    \
            else if (j->s == 2) pool_plane_##T(j, x, y, 2);                               \
            else pool_plane_##T(j, x, y, j->s);                                           \
        }                                                                                 \
    }                                                                                     \
    /* Backward: g goes to the window's first maximum (a NaN counts as a new   \
     * maximum, so to the last NaN), the element PyTorch's forward records. */  \
    static void pool_bwd_##T(void *ctx, int64_t p0, int64_t p1) {                         \
        const pool_job *j = ctx;                                                          \
        for (int64_t pl = p0; pl < p1; pl++) {                                            \
            const T *x = (const T *)j->x + pl * j->h * j->w;                              \
            const T *g = (const T *)j->g + pl * j->oh * j->ow;                            \
            T *dx = (T *)j->out + pl * j->h * j->w;                                       \
            memset(dx, 0, (size_t)(j->h * j->w) * sizeof(T));                             \
            for (int64_t oh = 0; oh < j->oh; oh++) {                                      \
                int64_t h0 = oh * j->s - j->p, h1 = h0 + j->k;                            \
                h0 = h0 < 0 ? 0 : h0, h1 = h1 > j->h ? j->h : h1;                         \
                for (int64_t ow = 0; ow < j->ow; ow++) {                                  \
                    int64_t w0 = ow * j->s - j->p, w1 = w0 + j->k;                        \
                    w0 = w0 < 0 ? 0 : w0, w1 = w1 > j->w ? j->w : w1;                     \
                    if (h0 >= h1 || w0 >= w1) continue; /* all padding: H or W is 0 */    \
                    int64_t best = h0 * j->w + w0;                                        \
                    T m = NEG_INF;                                                        \
                    for (int64_t ih = h0; ih < h1; ih++)                                  \
                        for (int64_t iw = w0; iw < w1; iw++) {                            \
                            T v = x[ih * j->w + iw];                                      \
                            if (v > m || v != v) m = v, best = ih * j->w + iw;            \
                        }                                                                 \
                    dx[best] += g[oh * j->ow + ow];                                       \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }
POOL_LOOPS(float, -INFINITY)
POOL_LOOPS(double, -(double)INFINITY)

/* Validates pooling arguments for x and fills j's geometry. */
static bool pool_geom(const char *op, const kn_tensor *x, int kernel, int stride, int padding,
                      pool_job *j) {
    if (!check_4d(op, "x", "[N,C,H,W]", x) || !check_float(op, "x", x, x->dtype)) return false;
    char s[KN_SHAPE_BUF];
    kn__shape_str(x->shape, 4, s);
    if (kernel < 1 || stride < 1 || padding < 0)
        return kn__error("%s: need kernel >= 1, stride >= 1, padding >= 0; got kernel %d, "
                         "stride %d, padding %d (x %s)", op, kernel, stride, padding, s), false;
    if (padding > kernel / 2)
        return kn__error("%s: padding %d must be at most half the kernel %d (x %s)", op, padding,
                         kernel, s), false;
    int64_t ph = x->shape[2] + 2 * (int64_t)padding, pw = x->shape[3] + 2 * (int64_t)padding;
    if (kernel > ph || kernel > pw)
        return kn__error("%s: kernel %d is larger than the padded input %lldx%lld of x %s "
                         "(padding %d)", op, kernel, (long long)ph, (long long)pw, s, padding),
               false;
    *j = (pool_job){.h = x->shape[2], .w = x->shape[3], .oh = (ph - kernel) / stride + 1,
                    .ow = (pw - kernel) / stride + 1, .k = kernel, .s = stride, .p = padding};
    return true;
}

kn_tensor *kn_max_pool2d(kn_tensor *x, int kernel, int stride, int padding) {
    KN_CHECK(OP_POOL, x);
    pool_job j;
    if (!pool_geom(OP_POOL, x, kernel, stride, padding, &j)) return NULL;
    kn_tensor *out = kn__alloc(KN_SHAPE(x->shape[0], x->shape[1], j.oh, j.ow), x->dtype);
    kn_tensor *xd = dense(x);
    if (!out || !xd) {
        kn__drop(out);
        kn__drop(xd);
        return NULL;
    }
    j.x = kn__ptr(xd);
    j.out = kn__ptr(out);
    kn__parallel_for(x->shape[0] * x->shape[1], grain_for(j.oh * j.ow * j.k * j.k),
                     x->dtype == KN_F32 ? pool_fwd_float : pool_fwd_double, &j);
    kn__drop(xd);
    return kn__record(KN_OP_max_pool2d, out, &x, 1, &(kn_params){.i = {kernel, stride, padding}});
}

kn_tensor *kn__max_pool2d_grad(kn_tensor *g, kn_tensor *x, int kernel, int stride, int padding) {
    const char *op = "kn_max_pool2d (grad)";
    KN_CHECK(op, g);
    KN_CHECK(op, x);
    pool_job j;
    if (!pool_geom(op, x, kernel, stride, padding, &j) || !check_float(op, "grad", g, x->dtype))
        return NULL;
    int64_t want[4] = {x->shape[0], x->shape[1], j.oh, j.ow};
    if (g->ndim != 4 || memcmp(g->shape, want, sizeof want)) {
        char a[KN_SHAPE_BUF], b[KN_SHAPE_BUF];
        return kn__error("%s: grad has shape %s but the pooled output is %s", op,
                         kn__shape_str(g->shape, g->ndim, a), kn__shape_str(want, 4, b));
    }
    kn_tensor *out = kn__alloc(x->shape, 4, x->dtype);
    kn_tensor *xd = dense(x), *gd = dense(g);
    if (out && xd && gd) {
        j.x = kn__ptr(xd);
        j.g = kn__ptr(gd);
        j.out = kn__ptr(out);
        kn__parallel_for(want[0] * want[1], grain_for(j.oh * j.ow * j.k * j.k),
                         x->dtype == KN_F32 ? pool_bwd_float : pool_bwd_double, &j);
    } else {
        kn__drop(out);
        out = NULL;
    }
    kn__drop(xd);
    kn__drop(gd);
    return kn__record(KN_OP_max_pool2d_grad, out, (kn_tensor *[]){g, x}, 2,
                      &(kn_params){.i = {kernel, stride, padding}});
}
