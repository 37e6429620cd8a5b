/* PyTorch-style tensor formatting: values (truncated past 1000 elements,
 * showing 3 at each edge), then shape and dtype. */
#include "internal.h"
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char *s; size_t n, cap; bool oom; } sbuf;

static void put(sbuf *b, const char *fmt, ...) {
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (k >= 0 && !b->oom && b->n + (size_t)k + 1 > b->cap) {
        size_t cap = (b->cap + (size_t)k + 1) * 2;
        char *s = realloc(b->s, cap);
        if (s) {
            b->s = s;
            b->cap = cap;
        } else {
            b->oom = true;
        }
    }
    if (k >= 0 && !b->oom) {
        vsnprintf(b->s + b->n, (size_t)k + 1, fmt, ap2);
        b->n += (size_t)k;
    }
    va_end(ap2);
}

typedef struct { const kn_tensor *t; bool summarize, sci; int prec; } fmt_ctx;

static void put_value(sbuf *b, const fmt_ctx *c, const char *p) {
    double v = kn__load(p, c->t->dtype);
    if (c->t->dtype == KN_BOOL) put(b, v ? "True" : "False");
    else if (c->t->dtype == KN_I64) put(b, "%lld", (long long)*(const int64_t *)p);
    else if (c->t->dtype == KN_I32) put(b, "%d", *(const int32_t *)p);
    else if (isnan(v)) put(b, "nan");
    else if (isinf(v)) put(b, v > 0 ? "inf" : "-inf");
    else if (c->sci) put(b, "%.*e", c->prec, v);
    else put(b, "%.*f", c->prec, v);
}

static void put_dim(sbuf *b, const fmt_ctx *c, int d, const char *p, int indent) {
    const kn_tensor *t = c->t;
    int64_t n = t->shape[d], step = t->strides[d] * (int64_t)kn_dtype_size(t->dtype);
    put(b, "[");
    for (int64_t i = 0; i < n; i++) {
        if (c->summarize && n > 6 && i == 3) {
            put(b, d == t->ndim - 1 ? "..., " : "...,\n%*s", d == t->ndim - 1 ? 0 : indent + 1, "");
            i = n - 3;
        }
        if (d == t->ndim - 1) put_value(b, c, p + i * step);
        else put_dim(b, c, d + 1, p + i * step, indent + 1);
        if (i + 1 < n) {
            if (d == t->ndim - 1) put(b, ", ");
            else put(b, ",%s%*s", d == t->ndim - 2 ? "\n" : "\n\n", indent + 1, "");
        }
    }
    put(b, "]");
}

char *kn_to_string(const kn_tensor *t) {
    if (!t) return kn__null_arg("kn_to_string");
    sbuf b = {0};
    int64_t n = kn__tnumel(t);
    fmt_ctx c = {t, n > 1000, false, 4};
    if (kn__is_float(t->dtype)) {  /* PyTorch switches to scientific for wide ranges */
        double lo = INFINITY, hi = 0;
        for (int64_t i = 0; i < n && i < 100000; i++) {
            int64_t rem = i, off = 0;
            for (int d = t->ndim - 1; d >= 0; d--) {
                off += (rem % t->shape[d]) * t->strides[d];
                rem /= t->shape[d];
            }
            double v = fabs(kn__load(kn__ptr(t) + off * (int64_t)kn_dtype_size(t->dtype), t->dtype));
            if (isfinite(v) && v != 0) { lo = v < lo ? v : lo; hi = v > hi ? v : hi; }
        }
        c.sci = hi >= 1e8 || (lo < 1e-4 && lo < INFINITY) || (hi > 0 && hi / lo > 1000);
    }
    put(&b, "tensor(");
    if (t->ndim == 0) put_value(&b, &c, kn__ptr(t));
    else put_dim(&b, &c, 0, kn__ptr(t), 7);
    char sb[KN_SHAPE_BUF];
    put(&b, ", shape=%s, dtype=%s)", kn__shape_str(t->shape, t->ndim, sb), kn_dtype_name(t->dtype));
    if (b.oom) {
        free(b.s);
        return kn__error("kn_to_string: out of memory");
    }
    return b.s;
}

void kn_print(const kn_tensor *t) {
    char *s = kn_to_string(t);
    if (s) puts(s);
    free(s);
}
