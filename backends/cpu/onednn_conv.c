/* f32 convolution through oneDNN's convolution primitives (forward,
 * backward data, backward weights) on plain nchw / oihw buffers, cached by
 * geometry (onednn_prim.h). */
#include "../../eager/conv.h"
#include "onednn_prim.h"
#include <oneapi/dnnl/dnnl_debug.h>

KN_PRIM_CACHE(conv_cache, 64);

enum { K_KIND, K_N, K_C, K_H, K_W, K_O, K_KH, K_KW, K_OH, K_OW, K_STRIDE, K_PAD, K_BIAS, K_KEY };
enum { MD_A, MD_B, MD_OUT, MD_BIAS };  /* the run's operands, in kn__prim_run's order */

static dnnl_status_t md4(dnnl_memory_desc_t *md, int64_t a, int64_t b, int64_t c, int64_t d,
                         dnnl_format_tag_t tag) {
    dnnl_dims_t dims = {a, b, c, d};
    return dnnl_memory_desc_init_by_tag(md, 4, dims, dnnl_f32, tag);
}

/* Builds the primitive for e->key into e; returns oneDNN's status. */
static dnnl_status_t conv_build(kn_prim *e, dnnl_engine_t engine) {
    const int64_t *k = e->key;
    dnnl_status_t s;
    dnnl_memory_desc_t src, wei, dst, bias;
    dnnl_convolution_desc_t fd, bd;
    dnnl_primitive_desc_t fpd = NULL, pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_dims_t strides = {k[K_STRIDE], k[K_STRIDE]}, pad = {k[K_PAD], k[K_PAD]};
    KN_DNNL_TRY(md4(&src, k[K_N], k[K_C], k[K_H], k[K_W], dnnl_nchw));
    KN_DNNL_TRY(md4(&wei, k[K_O], k[K_C], k[K_KH], k[K_KW], dnnl_oihw));
    KN_DNNL_TRY(md4(&dst, k[K_N], k[K_O], k[K_OH], k[K_OW], dnnl_nchw));
    dnnl_dims_t bdims = {k[K_O]};
    KN_DNNL_TRY(dnnl_memory_desc_init_by_tag(&bias, 1, bdims, dnnl_f32, dnnl_a));
    KN_DNNL_TRY(dnnl_primitive_attr_create(&attr));
    KN_DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    bool fwd = k[K_KIND] == KN_CONV_FWD;
    KN_DNNL_TRY(dnnl_convolution_forward_desc_init(&fd, fwd ? dnnl_forward_inference : dnnl_forward_training,
                                           dnnl_convolution_direct, &src, &wei,
                                           k[K_BIAS] ? &bias : NULL, &dst, strides, pad, pad));
    /* The forward primitive desc is the primitive itself, or the hint that
     * the backward ones require. */
    KN_DNNL_TRY(dnnl_primitive_desc_create(&fpd, &fd, fwd ? attr : NULL, engine, NULL));
    dnnl_memory_desc_t *md = e->md;
    if (fwd) {
        pd = fpd;
        fpd = NULL;
        md[MD_A] = src, md[MD_B] = wei, md[MD_BIAS] = bias, md[MD_OUT] = dst;
    } else if (k[K_KIND] == KN_CONV_BWD_DATA) {
        KN_DNNL_TRY(dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &src, &wei,
                                                     &dst, strides, pad, pad));
        KN_DNNL_TRY(dnnl_primitive_desc_create(&pd, &bd, attr, engine, fpd));
        md[MD_A] = dst, md[MD_B] = wei, md[MD_OUT] = src;
    } else {
        KN_DNNL_TRY(dnnl_convolution_backward_weights_desc_init(&bd, dnnl_convolution_direct, &src, &wei,
                                                        NULL, &dst, strides, pad, pad));
        KN_DNNL_TRY(dnnl_primitive_desc_create(&pd, &bd, attr, engine, fpd));
        md[MD_A] = dst, md[MD_B] = src, md[MD_OUT] = wei;
    }
    KN_DNNL_TRY(kn__prim_create(e, pd));
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (fpd) dnnl_primitive_desc_destroy(fpd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return s;
}

int kn__conv2d_f32(const char *op, kn_conv_kind kind, const kn_conv_geom *g, const float *a,
                   const float *b, const float *bias, float *out) {
    static const int ids[3][4] = {
        [KN_CONV_FWD] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS},
        [KN_CONV_BWD_DATA] = {DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC},
        [KN_CONV_BWD_WEIGHTS] = {DNNL_ARG_DIFF_DST, DNNL_ARG_SRC, DNNL_ARG_DIFF_WEIGHTS},
    };
    dnnl_status_t s;
    bool with_bias = kind == KN_CONV_FWD && bias != NULL;
    int64_t key[K_KEY] = {kind, g->n, g->c, g->h, g->w, g->o, g->kh, g->kw, g->oh, g->ow,
                          g->stride, g->pad, with_bias};
    kn_prim *e = kn__prim_get(&conv_cache, key, K_KEY, conv_build, &s);
    if (e) s = kn__prim_run(&conv_cache, e, 4, ids[kind], (const void *[]){a, b, out, with_bias ? bias : NULL});
    if (s == dnnl_success) return 0;
    kn__error("%s: oneDNN convolution failed for x [%lld,%lld,%lld,%lld], w [%lld,%lld,%lld,%lld], "
              "stride %d, padding %d (%s)", op, (long long)g->n, (long long)g->c, (long long)g->h,
              (long long)g->w, (long long)g->o, (long long)g->c, (long long)g->kh,
              (long long)g->kw, g->stride, g->pad, dnnl_status2str(s));
    return -1;
}
