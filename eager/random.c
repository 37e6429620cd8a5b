/* rand and randn from the Philox stream. Element i of a call uses draw
 * offset + i (randn: offset + 2i and 2i+1), so results do not depend on how
 * the work is split across threads, nor on eager vs traced execution. */
#include "../core/autograd.h"
#include "../core/scalar.h"

typedef struct { void *out; kn_dtype dt; uint64_t seed, offset; bool normal; } rng_ctx;

/* 24 (f32) or 53 (f64) random bits mapped to [0, 1). */
static inline double uniform(const uint32_t *r, int k, kn_dtype dt) {
    if (dt == KN_F32) return (double)(r[k] >> 8) * 0x1p-24;
    uint64_t v = ((uint64_t)r[k] << 32 | r[(k + 1) & 3]) >> 11;
    return (double)v * 0x1p-53;
}

static void fill(void *p, int64_t begin, int64_t end) {
    rng_ctx *c = p;
    /* Each element takes 4 draws (one Philox block): simple and split-proof. */
    for (int64_t i = begin; i < end; i++) {
        uint32_t r[4];
        kn__philox4x32(c->seed, c->offset / 4 + (uint64_t)i, r);
        double v;
        if (c->normal) {  /* Box-Muller with the shared formulas */
            double u1 = 1.0 - uniform(r, 0, KN_F64), u2 = uniform(r, 2, KN_F64);
            v = sqrt(-2.0 * kn_s_log_f64(u1)) * kn_s_cos_f64(6.283185307179586 * u2);
        } else {
            v = uniform(r, 0, c->dt);
        }
        if (c->dt == KN_F32) {
            float f = (float)v;
            ((float *)c->out)[i] = f < 1.0f || c->normal ? f : 0x1.fffffep-1f;
        } else {
            ((double *)c->out)[i] = v;
        }
    }
}

static kn_tensor *sample(const char *op, const int64_t *shape, int ndim, kn_dtype dt, bool normal) {
    if (!kn__is_float(dt))
        return kn__error("%s: dtype %s is not supported (expected f32 or f64)", op, kn_dtype_name(dt));
    kn_tensor *t = kn__alloc(shape, ndim, dt);
    if (!t) return NULL;
    int64_t n = kn__tnumel(t);
    rng_ctx c = {kn__ptr(t), dt, 0, 0, normal};
    kn__philox_reserve((uint64_t)n * 4, &c.seed, &c.offset);
    kn__parallel_for(n, 1 << 14, fill, &c);
    return kn__record(normal ? KN_OP_randn : KN_OP_rand, t, NULL, 0, NULL);
}

kn_tensor *kn_rand(const int64_t *shape, int ndim, kn_dtype dt) { return sample("kn_rand", shape, ndim, dt, false); }
kn_tensor *kn_randn(const int64_t *shape, int ndim, kn_dtype dt) { return sample("kn_randn", shape, ndim, dt, true); }
