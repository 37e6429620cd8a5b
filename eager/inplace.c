/* In-place ops, for optimizers and buffers. Each computes out of place and
 * copies back: simple, and the copy is cheap next to the ops optimizers do. */
#include "../trace/trace.h"
#include <string.h>

/* In-place writes and autograd: a leaf that requires grad may only be
 * changed under no-grad (an optimizer step), as in PyTorch. */
static int check_target(const char *op, kn_tensor *t) {
    if (!t) return kn__null_arg(op), -1;
    if (t->requires_grad && kn_grad_enabled()) {
        kn__error("%s: a tensor that requires grad cannot be modified in place while grad mode is "
                  "on (wrap the update in kn_no_grad_begin/kn_no_grad_end)", op);
        return -1;
    }
    return 0;
}

/* Writes r into t if r has t's shape; drops r. */
static int write_back(const char *op, kn_tensor *t, kn_tensor *r) {
    if (!r) return -1;
    int rc = 0;
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    if (r->ndim != t->ndim || memcmp(r->shape, t->shape, (size_t)t->ndim * sizeof(int64_t))) {
        kn__error("%s: result shape %s does not match the target's shape %s", op,
                  kn__shape_str(r->shape, r->ndim, b0), kn__shape_str(t->shape, t->ndim, b1));
        rc = -1;
    } else if (kn__is_float(r->dtype) && !kn__is_float(t->dtype)) {
        kn__error("%s: result dtype %s cannot be stored in a %s tensor", op,
                  kn_dtype_name(r->dtype), kn_dtype_name(t->dtype));
        rc = -1;
    } else {
        kn__copy(t, r);
        kn__bump_version(t);
        kn__trace_write(t, r);
    }
    kn__drop(r);
    return rc;
}

#define INPLACE_BINARY(name)                                                      \
    int kn_##name##_(kn_tensor *t, kn_tensor *other) {                            \
        if (check_target("kn_" #name "_", t) != 0) return -1;                     \
        if (!other) return kn__null_arg("kn_" #name "_"), -1;                     \
        kn_no_grad_begin();                                                       \
        kn_tensor *r = kn_##name(t, other);                                       \
        kn_no_grad_end();                                                         \
        return write_back("kn_" #name "_", t, r);                                 \
    }
INPLACE_BINARY(add)
INPLACE_BINARY(sub)
INPLACE_BINARY(mul)
INPLACE_BINARY(div)

#define INPLACE_SCALAR(name)                                                      \
    int kn_##name##_scalar_(kn_tensor *t, double s) {                             \
        if (check_target("kn_" #name "_scalar_", t) != 0) return -1;              \
        kn_no_grad_begin();                                                       \
        kn_tensor *r = kn_##name##_scalar(t, s);                                  \
        kn_no_grad_end();                                                         \
        return write_back("kn_" #name "_scalar_", t, r);                          \
    }
INPLACE_SCALAR(add)
INPLACE_SCALAR(mul)

int kn_copy_(kn_tensor *t, kn_tensor *src) {
    if (check_target("kn_copy_", t) != 0) return -1;
    if (!src) return kn__null_arg("kn_copy_"), -1;
    int64_t shape[KN_MAX_DIMS];
    int nd;
    char b0[KN_SHAPE_BUF], b1[KN_SHAPE_BUF];
    if (!kn__broadcast_shape(t->shape, t->ndim, src->shape, src->ndim, shape, &nd) || nd != t->ndim ||
        memcmp(shape, t->shape, (size_t)nd * sizeof *shape)) {
        kn__error("kn_copy_: source of shape %s cannot be broadcast to the target's shape %s",
                  kn__shape_str(src->shape, src->ndim, b0), kn__shape_str(t->shape, t->ndim, b1));
        return -1;
    }
    /* Overlapping storage: go through a temporary so no value is read after it is written. */
    kn_tensor *s = src->storage == t->storage ? kn_contiguous(kn_detach(src)) : kn__ret(src);
    if (!s) return -1;
    kn__copy(t, s);
    kn__bump_version(t);
    kn__trace_write(t, s);
    kn__drop(s);
    return 0;
}

int kn_fill_(kn_tensor *t, double value) {
    if (check_target("kn_fill_", t) != 0) return -1;
    kn_tensor *v = kn_scalar(value, t->dtype);
    if (!v) return -1;
    kn__copy(t, v);
    kn__bump_version(t);
    kn__trace_write(t, v);
    kn__drop(v);
    return 0;
}
