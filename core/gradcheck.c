/* kn_gradcheck: analytic gradients of sum(f(in) * w) against central
 * differences, element by element. Meant for f64 inputs. */
#include "autograd.h"
#include <math.h>

static char *elem_ptr(kn_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->strides[d];
        i /= t->shape[d];
    }
    return kn__ptr(t) + off * (int64_t)kn_dtype_size(t->dtype);
}

/* sum(f(in) * w) as a double, or NaN on error. */
static double weighted(kn_grad_fn f, void *ctx, kn_tensor *const *in, kn_tensor *w) {
    kn_pool_push();  /* one evaluation's temporaries die here, not at the end */
    kn_tensor *out = f(ctx, in);
    kn_tensor *s = out ? kn_sum(kn_mul(kn_cast(out, KN_F64), w), KN_ALL_DIMS, false) : NULL;
    double v = s ? kn_item(s) : NAN;
    kn_pool_pop();
    return v;
}

bool kn_gradcheck(kn_grad_fn f, void *ctx, kn_tensor *const *in, int n, double eps,
                  double atol, double rtol) {
    if (!f || !in) return kn__null_arg("kn_gradcheck"), false;
    for (int i = 0; i < n; i++)
        if (!in[i]) return kn__null_arg("kn_gradcheck"), false;
    bool ok = false;
    kn_pool_push();
    for (int i = 0; i < n; i++) kn_zero_grad(in[i]);
    kn_tensor *out = f(ctx, in);
    if (!out) goto done;
    if (!out->requires_grad) {
        kn__error("kn_gradcheck: the output does not require grad (mark an input with "
                  "kn_set_requires_grad)");
        goto done;
    }
    kn_tensor *w = kn_randn(out->shape, out->ndim, KN_F64);
    if (!w || kn_backward(out, w) != 0) goto done;
    kn_no_grad_begin();
    ok = true;
    for (int i = 0; i < n && ok; i++) {
        kn_tensor *x = in[i];
        if (!x->requires_grad) continue;
        kn_tensor *g = kn_grad(x);
        int64_t cnt = kn__tnumel(x);
        for (int64_t j = 0; j < cnt && ok; j++) {
            char *p = elem_ptr(x, j);
            double v = kn__load(p, x->dtype);
            kn__store(p, x->dtype, v + eps);
            double hi = weighted(f, ctx, in, w);
            kn__store(p, x->dtype, v - eps);
            double lo = weighted(f, ctx, in, w);
            kn__store(p, x->dtype, v);
            double numeric = (hi - lo) / (2 * eps);
            double analytic = g ? kn__load(elem_ptr(g, j), g->dtype) : 0;
            if (!(fabs(numeric - analytic) <= atol + rtol * fabs(numeric))) {
                kn__error("kn_gradcheck: input %d element %lld: analytic %.10g, numeric %.10g", i,
                          (long long)j, analytic, numeric);
                ok = false;
            }
        }
    }
    kn_no_grad_end();
done:
    for (int i = 0; i < n; i++) kn_zero_grad(in[i]);
    kn_pool_pop();
    return ok;
}
