/* Gradient ops of conv2d and max_pool2d, used by their derivative rules. */
#ifndef KN_CONV_H
#define KN_CONV_H
#include "../core/internal.h"

/* dL/dx of kn_conv2d, for an input of shape x_shape [N,C,H,W]. */
kn_tensor *kn__conv2d_grad_input(kn_tensor *g, kn_tensor *w, const int64_t *x_shape, int stride, int padding);
/* dL/dw of kn_conv2d, for a weight of shape w_shape [O,C,kh,kw]. */
kn_tensor *kn__conv2d_grad_weight(kn_tensor *g, kn_tensor *x, const int64_t *w_shape, int stride, int padding);
/* dL/dx of kn_max_pool2d: g routed to the first maximum of each window. */
kn_tensor *kn__max_pool2d_grad(kn_tensor *g, kn_tensor *x, int kernel, int stride, int padding);

/* ---- the f32 oneDNN backend (backends/cpu/onednn_conv.c) ---- */
typedef enum { KN_CONV_FWD, KN_CONV_BWD_DATA, KN_CONV_BWD_WEIGHTS } kn_conv_kind;
/* x [n,c,h,w], w [o,c,kh,kw], y [n,o,oh,ow]; square stride and padding. */
typedef struct {
    int64_t n, c, h, w, o, kh, kw, oh, ow;
    int stride, pad;
} kn_conv_geom;
/* Runs one convolution pass on dense buffers, with a primitive cached by
 * (kind, geometry, bias). FWD: a = x, b = w, bias may be NULL, out = y.
 * BWD_DATA: a = dy, b = w, out = dx. BWD_WEIGHTS: a = dy, b = x, out = dw.
 * Returns 0, or -1 with an error naming op. */
int kn__conv2d_f32(const char *op, kn_conv_kind kind, const kn_conv_geom *g, const float *a,
                   const float *b, const float *bias, float *out);
#endif
