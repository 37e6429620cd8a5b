/* Strided, broadcasting iteration over up to KN_MAX_OPS operands. Dims are
 * coalesced first, so contiguous work reaches the loop as one long run. */
#include "../core/internal.h"
#include <string.h>

bool kn__broadcast_shape(const int64_t *a, int na, const int64_t *b, int nb,
                         int64_t *out, int *nout) {
    int n = na > nb ? na : nb;
    int64_t r[KN_MAX_DIMS];  /* out may alias a or b */
    for (int i = 0; i < n; i++) {
        int64_t x = i < n - na ? 1 : a[i - (n - na)];
        int64_t y = i < n - nb ? 1 : b[i - (n - nb)];
        if (x != y && x != 1 && y != 1) return false;
        r[i] = x == 1 ? y : x;
    }
    memcpy(out, r, (size_t)n * sizeof *r);
    *nout = n;
    return true;
}

void kn__iter_add(kn_iter *it, const kn_tensor *t) {
    int k = it->nop++, off = it->ndim - t->ndim;
    int64_t esz = (int64_t)kn__size(t->dtype);
    it->base[k] = kn__ptr(t);
    for (int i = 0; i < it->ndim; i++) {
        int j = i - off;
        it->strides[k][i] = j < 0 || t->shape[j] == 1 ? 0 : t->strides[j] * esz;
    }
}

static void coalesce(kn_iter *it) {
    int n = 0;  /* dims kept so far, rebuilt in place from the inside out */
    int64_t shape[KN_MAX_DIMS], st[KN_MAX_OPS][KN_MAX_DIMS];
    for (int i = it->ndim - 1; i >= 0; i--) {
        if (it->shape[i] == 1) continue;
        bool merge = n > 0;
        for (int k = 0; k < it->nop && merge; k++)
            merge = it->strides[k][i] == st[k][n - 1] * shape[n - 1];
        if (merge) {
            shape[n - 1] *= it->shape[i];
            continue;
        }
        shape[n] = it->shape[i];
        for (int k = 0; k < it->nop; k++) st[k][n] = it->strides[k][i];
        n++;
    }
    /* n dims, innermost first; store outermost first. */
    for (int i = 0; i < n; i++) {
        it->shape[i] = shape[n - 1 - i];
        for (int k = 0; k < it->nop; k++) it->strides[k][i] = st[k][n - 1 - i];
    }
    if (n == 0) {
        it->shape[0] = 1;
        for (int k = 0; k < it->nop; k++) it->strides[k][0] = 0;
        n = 1;
    }
    it->ndim = n;
}

typedef struct { kn_iter *it; kn_loop_fn fn; const void *params; } run_ctx;

static void run_range(void *p, int64_t begin, int64_t end) {
    run_ctx *c = p;
    kn_iter *it = c->it;
    int nd = it->ndim, last = nd - 1;
    int64_t idx[KN_MAX_DIMS], rem = begin;
    for (int i = last; i >= 0; i--) {
        idx[i] = rem % it->shape[i];
        rem /= it->shape[i];
    }
    int64_t inner[KN_MAX_OPS];
    for (int k = 0; k < it->nop; k++) inner[k] = it->strides[k][last];
    for (int64_t pos = begin; pos < end;) {
        char *ptrs[KN_MAX_OPS];
        for (int k = 0; k < it->nop; k++) {
            char *q = it->base[k];
            for (int i = 0; i < nd; i++) q += idx[i] * it->strides[k][i];
            ptrs[k] = q;
        }
        int64_t len = it->shape[last] - idx[last];
        if (len > end - pos) len = end - pos;
        c->fn(len, ptrs, inner, c->params);
        pos += len;
        idx[last] += len;
        for (int i = last; i > 0 && idx[i] == it->shape[i]; i--) {
            idx[i] = 0;
            idx[i - 1]++;
        }
    }
}

void kn__iter_run(kn_iter *it, kn_loop_fn fn, const void *params, int64_t grain) {
    int64_t n = kn__numel(it->shape, it->ndim);
    if (n == 0) return;
    coalesce(it);
    run_ctx c = {it, fn, params};
    kn__parallel_for(n, grain, run_range, &c);
}

/* ---- copy with dtype conversion ---- */
#define COPY_LOOP(NAME, TD, TS, CONV)                                             \
    static void NAME(int64_t n, char **p, const int64_t *s, const void *u) {     \
        (void)u;                                                                  \
        char *d = p[0];                                                           \
        const char *x = p[1];                                                     \
        if (s[0] == sizeof(TD) && s[1] == sizeof(TS))                             \
            for (int64_t i = 0; i < n; i++) ((TD *)d)[i] = CONV(((const TS *)x)[i]); \
        else                                                                      \
            for (int64_t i = 0; i < n; i++)                                       \
                *(TD *)(d + i * s[0]) = CONV(*(const TS *)(x + i * s[1]));         \
    }
#define AS_IS(v) (v)
#define TO_BOOL(v) ((uint8_t)((v) != 0))
COPY_LOOP(copy1, uint8_t, uint8_t, AS_IS)
COPY_LOOP(copy4, uint32_t, uint32_t, AS_IS)
COPY_LOOP(copy8, uint64_t, uint64_t, AS_IS)

/* Conversions: one loop per (dst, src) pair, generated from the dtype list. */
#define CONV_ROW(TD, SD, CONV)                                                    \
    COPY_LOOP(conv_##SD##_f32, TD, float, CONV) COPY_LOOP(conv_##SD##_f64, TD, double, CONV) \
    COPY_LOOP(conv_##SD##_i32, TD, int32_t, CONV) COPY_LOOP(conv_##SD##_i64, TD, int64_t, CONV) \
    COPY_LOOP(conv_##SD##_bool, TD, uint8_t, CONV)
/* Float to int truncates; NaN and out-of-range values (UB in C) give the
 * minimum, as x86 (and so PyTorch on CPU) does. Ints just convert. */
static inline int32_t f2i32(double v) { return v > -0x1p31 - 1 && v < 0x1p31 ? (int32_t)v : INT32_MIN; }
static inline int64_t f2i64(double v) { return v >= -0x1p63 && v < 0x1p63 ? (int64_t)v : INT64_MIN; }
#define F2I32(v) _Generic((v), float: f2i32(v), double: f2i32(v), default: (int32_t)(v))
#define F2I64(v) _Generic((v), float: f2i64(v), double: f2i64(v), default: (int64_t)(v))
CONV_ROW(float, f32, (float))
CONV_ROW(double, f64, (double))
CONV_ROW(int32_t, i32, F2I32)
CONV_ROW(int64_t, i64, F2I64)
CONV_ROW(uint8_t, bool, TO_BOOL)
#define CONV_ENTRY(SD) {conv_##SD##_f32, conv_##SD##_f64, conv_##SD##_i32, conv_##SD##_i64, conv_##SD##_bool}
static const kn_loop_fn conv[KN_DTYPE_COUNT][KN_DTYPE_COUNT] = {
    [KN_F32] = CONV_ENTRY(f32), [KN_F64] = CONV_ENTRY(f64), [KN_I32] = CONV_ENTRY(i32),
    [KN_I64] = CONV_ENTRY(i64), [KN_BOOL] = CONV_ENTRY(bool),
};

kn_loop_fn kn__conv_loop(kn_dtype dst, kn_dtype src) { return conv[dst][src]; }

void kn__copy(kn_tensor *dst, const kn_tensor *src) {
    kn_iter it = {.ndim = dst->ndim};
    memcpy(it.shape, dst->shape, sizeof it.shape);
    kn__iter_add(&it, dst);
    kn__iter_add(&it, src);
    kn_loop_fn fn = conv[dst->dtype][src->dtype];
    if (dst->dtype == src->dtype) {
        size_t sz = kn_dtype_size(dst->dtype);
        fn = sz == 1 ? copy1 : sz == 4 ? copy4 : copy8;
    }
    kn__iter_run(&it, fn, NULL, 1 << 16);
}
