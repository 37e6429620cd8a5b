/* core/scalar.h - scalar math formulas shared by the eager CPU kernels, the
 * LLVM-bitcode JIT and NVRTC-compiled CUDA kernels.
 *
 * Rules every function here follows:
 *  - f32 versions use only + - * /, fmaf, sqrt, fabsf, copysignf, rintf and
 *    bit casts, all of which clang lowers to LLVM intrinsics, so a loop
 *    `y[i] = kn_s_exp_f32(x[i])` vectorizes (no libm calls, no errno).
 *  - No branches: special values are handled with ternary selects, every
 *    path is computed and the right one picked.
 *  - Fused multiply-adds are written as explicit fmaf (the build uses
 *    -ffp-contract=off).  Extra contraction (nvcc's default -fmad=true) is
 *    harmless; never build this with -ffast-math / -ffinite-math-only /
 *    -fassociative-math: NaN checks and the error-free sums would be
 *    optimized away.
 *  - f64 versions may call libm: they are for gradient checks, not hot loops.
 *
 * Accuracy of the f32 versions: max error over all 2^32 inputs, measured by
 * tests/scalar_accuracy_main.c against double libm, in ulps of the float
 * result (relative everywhere, no absolute tolerance):
 *   exp 0.89, log 0.84, tanh 1.00, erf 1.08, sigmoid 1.48,
 *   gelu 2.84, gelu_tanh 2.31 (also in the negative tails, where
 *   1 + erf / 1 + tanh would cancel),
 *   sin 1.67, cos 1.81 for |x| <= 1e6 (see kn__trig_reduce_f32),
 *   pow 0.79 on 1e8 sampled pairs, exact for y == 1 and y == 2,
 *   sqrt 0.5, rsqrt 1.49, the rest exact.
 * The test enforces exp/log 1, tanh/erf/sigmoid/sin/cos/pow 2,
 * gelu/gelu_tanh 3 and rsqrt 1.5 ulp.
 */
#ifndef KN_CORE_SCALAR_H
#define KN_CORE_SCALAR_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
/* NVRTC has no standard headers; fmaf, sqrtf, rintf, exp, ... are builtins. */
#define KN_SCALAR_INLINE static __device__ __forceinline__
typedef int kn__i32;
typedef unsigned int kn__u32;
typedef long long kn__i64;
typedef unsigned long long kn__u64;
#define KN__F2U(x) __float_as_uint(x)
#define KN__U2F(u) __uint_as_float(u)
#define KN__D2U(x) ((kn__u64)__double_as_longlong(x))
#define KN__U2D(u) __longlong_as_double((long long)(u))
#define KN__SQRTF(x) sqrtf(x)
#define KN__SQRT(x) sqrt(x)
#else
#include <math.h>
#include <stdint.h>
#include <string.h>
#define KN_SCALAR_INLINE static inline __attribute__((always_inline))
typedef int32_t kn__i32;
typedef uint32_t kn__u32;
typedef int64_t kn__i64;
typedef uint64_t kn__u64;
KN_SCALAR_INLINE kn__u32 kn__f2u(float x) { kn__u32 u; memcpy(&u, &x, sizeof u); return u; }
KN_SCALAR_INLINE float kn__u2f(kn__u32 u) { float x; memcpy(&x, &u, sizeof x); return x; }
KN_SCALAR_INLINE kn__u64 kn__d2u(double x) { kn__u64 u; memcpy(&u, &x, sizeof u); return u; }
KN_SCALAR_INLINE double kn__u2d(kn__u64 u) { double x; memcpy(&x, &u, sizeof x); return x; }
#define KN__F2U(x) kn__f2u(x)
#define KN__U2F(u) kn__u2f(u)
#define KN__D2U(x) kn__d2u(x)
#define KN__U2D(u) kn__u2d(u)
/* sqrtf() keeps a libm call for errno unless -fno-math-errno; the
 * elementwise builtin is always the IEEE sqrt instruction. */
#if defined(__has_builtin)
#if __has_builtin(__builtin_elementwise_sqrt)
#define KN__SQRTF(x) __builtin_elementwise_sqrt((float)(x))
#define KN__SQRT(x) __builtin_elementwise_sqrt((double)(x))
#endif
#endif
#ifndef KN__SQRTF
#define KN__SQRTF(x) __builtin_sqrtf(x)
#define KN__SQRT(x) __builtin_sqrt(x)
#endif
#endif

#define KN__F32_NAN KN__U2F(0x7fc00000u)
#define KN__F32_INF KN__U2F(0x7f800000u)
#define KN__F64_NAN KN__U2D(0x7ff8000000000000ull)
#define KN__F64_INF KN__U2D(0x7ff0000000000000ull)

/* ------------------------------------------------------------------------ */
/* f32 building blocks                                                       */
/* ------------------------------------------------------------------------ */

/* 2^n as a float, n in [-126, 127]; unsigned shift so garbage n (from NaN
 * inputs, later discarded) is not UB. */
KN_SCALAR_INLINE float kn__pow2i_f32(kn__i32 n) {
    return KN__U2F((kn__u32)(n + 127) << 23);
}

/* m * 2^n in two steps so a subnormal result is rounded only once:
 * m * 2^floor(n/2) * 2^ceil(n/2).  With the bias folded in (b = n + 254),
 * the biased exponents are b >> 1 and b - (b >> 1): no signed division,
 * no separate +127.  Valid for n in [-200, 254] and m in [2^-20, 2^20]. */
KN_SCALAR_INLINE float kn__ldexp_f32(float m, kn__i32 n) {
    kn__u32 b = (kn__u32)n + 254u;
    kn__u32 h = b >> 1;
    return (m * KN__U2F(h << 23)) * KN__U2F((b - h) << 23);
}

/* Two-sum: s + e == a + b exactly. */
KN_SCALAR_INLINE float kn__two_sum_f32(float a, float b, float *e) {
    float s = a + b;
    float bb = s - a;
    *e = (a - (s - bb)) + (b - bb);
    return s;
}

/* num / (d + dl) for |dl| <= ulp(d): one division, then a correction that
 * also absorbs dl (the rounding error of d), ~0.5 ulp overall.  A zero or
 * NaN residual (num = +-0, +-inf, NaN) returns the plain quotient, which
 * keeps signed zeros and infinities. */
KN_SCALAR_INLINE float kn__div_pair_f32(float num, float d, float dl) {
    float inv = 1.0f / d;
    float r0 = num * inv;
    float res = fmaf(-r0, d, num);
    res = fmaf(-r0, dl, res);
    float r = fmaf(res, inv, r0);
    return (res == res && res != 0.0f) ? r : r0;
}

/* exp(hi + lo) = m * 2^n, m in [0.7, 1.42], |lo| << 1.  hi is clamped to
 * [-120, 90] (outside, the caller's result has already under/overflowed).
 * n = round(hi/ln2) comes out of the mantissa bits of a shifted fma, so no
 * float->int conversion (UB for NaN) is needed. */
KN_SCALAR_INLINE float kn__exp_core_f32(float hi, float lo, kn__i32 *n_out) {
    const float shift = 0x1.8p23f;
    hi = hi > 90.0f ? 90.0f : hi;
    hi = hi < -120.0f ? -120.0f : hi; /* NaN passes both */
    float t = fmaf(hi, 0x1.715476p+0f, shift);
    float nf = t - shift;
    *n_out = (kn__i32)(KN__F2U(t) - KN__F2U(shift));
    /* r1 = hi - n*ln2_hi is exact (fma; |r1| < 0.5, on the 2^-25 grid);
     * the small rest rl = lo - n*ln2_lo is kept apart. */
    float r1 = fmaf(nf, -0x1.62e430p-1f, hi);
    float rl = fmaf(nf, 0x1.05c610p-29f, lo);
    float r = r1 + rl;
    /* exp(r) - 1 - r, minimax on [-ln2/2, ln2/2], rel. error 2^-28.3 */
    float q = fmaf(0x1.6a2434p-10f, r, 0x1.1239e2p-7f);
    q = fmaf(q, r, 0x1.5558f2p-5f);
    q = fmaf(q, r, 0x1.555492p-3f);
    q = fmaf(q, r, 0x1.fffffcp-2f);
    /* 1 + r1 as an exact pair so only the last addition rounds */
    float s = 1.0f + r1;
    float es = (1.0f - s) + r1;
    return s + fmaf(r * r, q, es + rl);
}

/* ------------------------------------------------------------------------ */
/* exp / log                                                                 */
/* ------------------------------------------------------------------------ */

/* exp(x) = 2^n exp(r): returns exp(r) and sets *t, whose low mantissa bits
 * hold n (t = x/ln2 + 1.5*2^23). Leaner than kn__exp_core_f32 (no lo input,
 * no exact 1 + r pair): r is rounded once and exp(r) is a plain Horner sum
 * ending in fma(p, r, 1), q as in kn__exp_core_f32. */
KN_SCALAR_INLINE float kn__exp_reduce_f32(float x, float *t) {
    *t = fmaf(x, 0x1.715476p+0f, 0x1.8p23f);
    float nf = *t - 0x1.8p23f;
    float r = fmaf(nf, -0x1.62e430p-1f, x);
    r = fmaf(nf, 0x1.05c610p-29f, r);
    float p = fmaf(0x1.6a2434p-10f, r, 0x1.1239e2p-7f);
    p = fmaf(p, r, 0x1.5558f2p-5f);
    p = fmaf(p, r, 0x1.555492p-3f);
    p = fmaf(p, r, 0x1.fffffcp-2f);
    p = fmaf(p, r, 1.0f);
    return fmaf(p, r, 1.0f);
}

KN_SCALAR_INLINE float kn_s_exp_f32(float x) {
    x = x > 90.0f ? 90.0f : x;
    x = x < -120.0f ? -120.0f : x; /* NaN passes both */
    float t, m = kn__exp_reduce_f32(x, &t);
    return kn__ldexp_f32(m, (kn__i32)(KN__F2U(t) - KN__F2U(0x1.8p23f)));
}

KN_SCALAR_INLINE double kn_s_exp_f64(double x) { return exp(x); }

/* exp(x) for x <= 0 or NaN: the x - max(row) of softmax, log_softmax,
 * logsumexp and cross-entropy. No overflow to guard, one scaling step
 * (2^n from t's bits), and results below FLT_MIN flushed to +0: bit for bit
 * kn_s_exp_f32 for x >= ln(FLT_MIN), 5 fewer vector instructions. (A sum
 * of exps that includes 1 loses nothing from flushing addends < 2^-126.) */
KN_SCALAR_INLINE float kn_s_exp_nonpos_f32(float x) {
    float t, m = kn__exp_reduce_f32(x, &t);
    /* t's low bits hold n, so t's bits << 23 are n << 23: 2^n for n >= -126 */
    float e = m * KN__U2F((KN__F2U(t) << 23) + (127u << 23));
    return x < -0x1.5d589ep+6f ? 0.0f : e; /* ln(FLT_MIN); -inf too; NaN stays */
}

/* Splits x > 0 (subnormals too) into m * 2^e with m in [sqrt(.5), sqrt(2)). */
KN_SCALAR_INLINE float kn__log_split_f32(float x, float *ef) {
    int sub = x < 0x1p-126f;
    float xs = sub ? x * 0x1p23f : x;
    kn__u32 ix = KN__F2U(xs) - 0x3f3504f3u; /* 0x3f3504f3 = sqrt(0.5) */
    kn__i32 e = ((kn__i32)ix >> 23) - (sub ? 23 : 0);
    *ef = (float)e;
    return KN__U2F((ix & 0x007fffffu) + 0x3f3504f3u);
}

/* log(x) = e*ln2 + log1p(f).  With s = f/(2+f), log1p(f) = 2atanh(s)
 * = 2s + s*R, R = s^2 Q(s^2), rewritten as f - (hfsq - s*(hfsq + R)),
 * hfsq = f^2/2, so the leading f stays exact. */
KN_SCALAR_INLINE float kn_s_log_f32(float x) {
    float ef;
    float m = kn__log_split_f32(x, &ef);
    float f = m - 1.0f;
    float s = f / (2.0f + f);
    float z = s * s;
    /* Q(z) minimax on [0, 0.02944], relative to log: 2^-30.2 */
    float R = z * fmaf(fmaf(0x1.31e37ep-2f, z, 0x1.995eb4p-2f), z, 0x1.55557ap-1f);
    float hfsq = 0.5f * (f * f);
    float y = f - (hfsq - fmaf(s, hfsq + R, ef * -0x1.05c610p-29f));
    float r = fmaf(ef, 0x1.62e430p-1f, y);
    r = x == 0.0f ? -KN__F32_INF : r;
    r = x < 0.0f ? KN__F32_NAN : r;
    r = x == KN__F32_INF ? x : r;
    r = x != x ? x : r;
    return r;
}

KN_SCALAR_INLINE double kn_s_log_f64(double x) { return log(x); }

/* ------------------------------------------------------------------------ */
/* tanh / sigmoid                                                            */
/* ------------------------------------------------------------------------ */

/* tanh|x| = E/(E + 2), E = expm1(2|x|) = 2^n (1 + 2h) - 1, where
 * h = (exp(2r) - 1)/2 = r + r^2 Q(r), r = |x| - n ln2/2, |r| <= ln2/4.
 * One path for all |x| (no cancellation: E keeps relative accuracy).
 * D = E + 2 is formed as one fma from 2^(n+1) h and 2^n + 1, with its
 * rounding error (and h's) kept in dl; the numerator is D - 2 exactly, so
 * the division needs no separate E.  |x| is clamped to 8.6 so D < 2^25
 * keeps d - 2 exact; that gives tanh(8.6) = 1 - 2^-24 up to |x| = 9, where
 * tanh rounds to 1.  Sign restored last so tanh(-0) = -0. */
KN_SCALAR_INLINE float kn_s_tanh_f32(float x) {
    const float shift = 0x1.8p23f;
    float ax = fabsf(x);
    float a = ax > 8.6f ? 8.6f : ax; /* NaN passes */
    float t = fmaf(a, 0x1.715476p+1f, shift);
    float nf = t - shift;
    float r = fmaf(nf, -0x1.62e430p-2f, a); /* exact */
    r = fmaf(nf, 0x1.05c610p-30f, r);
    /* Q minimax on [-ln2/4, ln2/4], relative to h: 2^-31 */
    float q = fmaf(0x1.a2a2fep-7f, r, 0x1.6d833cp-5f);
    q = fmaf(q, r, 0x1.11101ep-3f);
    q = fmaf(q, r, 0x1.5554a0p-2f);
    q = fmaf(q, r, 0x1.555556p-1f);
    q = fmaf(q, r, 1.0f);
    float r2 = r * r;
    float h = fmaf(r2, q, r);
    float hl = fmaf(r2, q, r - h); /* r - h exact (Sterbenz) */
    /* 2^(n+1) from t's bits: shift's bits vanish in the << 23 */
    float p2 = KN__U2F((KN__F2U(t) << 23) + 0x40000000u);
    float pp1 = fmaf(p2, 0.5f, 1.0f);
    float d = fmaf(p2, h, pp1);
    float dl = fmaf(p2, hl, fmaf(p2, h, pp1 - d)); /* D = d + dl */
    float inv = 1.0f / d;
    float num = d - 2.0f; /* exact for d < 2^25 */
    float q0 = num * inv;
    float res = fmaf(-q0, d, num);
    res = fmaf(1.0f - q0, dl, res); /* (D - 2) - q0 D */
    float y = fmaf(res, inv, q0);
    return copysignf(ax > 9.0f ? 1.0f : y, x);
}

KN_SCALAR_INLINE double kn_s_tanh_f64(double x) { return tanh(x); }

/* 1/(1+exp(-x)) written with e = exp(-|x|) <= 1 so nothing overflows:
 * x >= 0: 1/(1+e);  x < 0: e/(1+e) (keeps subnormal results). */
KN_SCALAR_INLINE float kn_s_sigmoid_f32(float x) {
    float e = kn_s_exp_f32(-fabsf(x));
    float num = x >= 0.0f ? 1.0f : e;
    float d = 1.0f + e;
    return kn__div_pair_f32(num, d, (1.0f - d) + e);
}

KN_SCALAR_INLINE double kn_s_sigmoid_f64(double x) {
    double e = exp(-fabs(x));
    double num = x >= 0.0 ? 1.0 : e;
    return num / (1.0 + e);
}

/* ------------------------------------------------------------------------ */
/* erf / gelu                                                                */
/* ------------------------------------------------------------------------ */

/* |x| < 1: x + x P(x^2);  1 <= |x|: 1 - exp(L(|x|)), L ~ log(erfc) as a
 * polynomial in |x| - 1, minimax weighted by erfc (2^-29.9), fit up to 3.93
 * where erf already rounds to 1. */
KN_SCALAR_INLINE float kn_s_erf_f32(float x) {
    float a = fabsf(x);
    float z = a * a;
    float p = fmaf(0x1.49630ep-14f, z, -0x1.a3f484p-11f);
    p = fmaf(p, z, 0x1.540560p-8f);
    p = fmaf(p, z, -0x1.b7f904p-6f);
    p = fmaf(p, z, 0x1.ce2cf6p-4f);
    p = fmaf(p, z, -0x1.81273ep-2f);
    p = fmaf(p, z, 0x1.06eba8p-3f);
    float small = fmaf(a, p, a);
    /* centred at 1, where erfc is largest, so the Horner sum does not cancel */
    float v = (a > 3.93f ? 3.93f : a) - 1.0f;
    float l = fmaf(0x1.8539f4p-13f, v, -0x1.debe72p-10f);
    l = fmaf(l, v, 0x1.441c1cp-7f);
    l = fmaf(l, v, -0x1.53f97ap-5f);
    l = fmaf(l, v, -0x1.afad34p-1f);
    l = fmaf(l, v, -0x1.51c9aap+1f);
    l = fmaf(l, v, -0x1.d97fc0p+0f);
    float big = 1.0f - kn_s_exp_f32(l);
    float r = a < 1.0f ? small : big;
    return copysignf(r, x);
}

KN_SCALAR_INLINE double kn_s_erf_f64(double x) { return erf(x); }

/* gelu(x) = x * Phi(x), Phi the standard normal CDF (== 0.5x(1+erf(x/sqrt2))).
 * |x| < 0.7: Phi = 0.5 + x S(x^2).
 * |x| >= 0.7: Phi(-a) = t/4 * exp(-a^2/2 + P(t - 0.53125)), t = 1/(1 + a/4).
 *   -a^2/2 is carried as hi+lo, the rounding error of t is fed back into
 *   the exponent, and 2^n is applied last, so the negative tail keeps full
 *   relative accuracy down to the underflow at x ~ -14.3 instead of
 *   cancelling in 1 + erf. */
KN_SCALAR_INLINE float kn_s_gelu_f32(float x) {
    float z = x * x;
    float s = fmaf(0x1.b0902ep-14f, z, -0x1.35a5a0p-10f);
    s = fmaf(s, z, 0x1.46c4d6p-7f);
    s = fmaf(s, z, -0x1.105816p-4f);
    s = fmaf(s, z, 0x1.988454p-2f);
    float central = x * fmaf(x, s, 0.5f);

    float a = fabsf(x);
    a = a > 15.0f ? 15.0f : a; /* NaN passes */
    float qa = 0.25f * a;
    float big = qa > 1.0f ? qa : 1.0f;
    float sml = qa > 1.0f ? 1.0f : qa;
    float d = big + sml;
    float dl = sml - (d - big); /* d + dl == 1 + a/4 exactly */
    float t = 1.0f / d;
    float rho = fmaf(-t, d, 1.0f);
    rho = fmaf(-t, dl, rho); /* relative error of t */
    float v = t - 0.53125f;
    /* log(4 Phi(-a)/t) + a^2/2, minimax in t - 0.53125 on [0.7, 15], 2^-29.3 */
    float p = fmaf(-0x1.295678p-2f, v, -0x1.141cc4p-4f);
    p = fmaf(p, v, 0x1.5e457ap-2f);
    p = fmaf(p, v, 0x1.af5be0p-3f);
    p = fmaf(p, v, -0x1.0cd2a6p-2f);
    p = fmaf(p, v, -0x1.a6378ap-2f);
    p = fmaf(p, v, 0x1.12aa76p-6f);
    p = fmaf(p, v, 0x1.846740p-1f);
    p = fmaf(p, v, 0x1.a83308p+0f);
    p = fmaf(p, v, -0x1.d641d2p-3f);
    /* t's error moves log Phi by rho * dlogPhi/dlogt, ~ 0.688 + 2.372t */
    float tcorr = rho * fmaf(2.372f, t, 0.688f);
    float h = -0.5f * (a * a);
    float hl = -0.5f * fmaf(a, a, -(a * a));
    float el;
    float sh = kn__two_sum_f32(h, p, &el);
    kn__i32 n;
    float m = kn__exp_core_f32(sh, hl + (el + tcorr), &n);
    n -= 2;
    float tm = t * m; /* Phi(-a) = tm * 2^n */
    float xc = x < -15.0f ? -15.0f : x; /* the tail underflows to -0 here */
    float neg = kn__ldexp_f32(xc * tm, n);
    float pos = x * (1.0f - kn__ldexp_f32(tm, n));
    float r = x < 0.0f ? neg : pos;
    r = x == -KN__F32_INF ? KN__F32_NAN : r; /* gelu(-inf) = -inf * 0 = NaN, as in PyTorch */
    return a < 0.7f ? central : r;
}

KN_SCALAR_INLINE double kn_s_gelu_f64(double x) {
    double xc = x < -40.0 ? -40.0 : x; /* erfc underflows */
    double r = 0.5 * xc * erfc(-xc * 0.70710678118654752440);
    return x == -KN__F64_INF ? KN__F64_NAN : r; /* gelu(-inf) is NaN in PyTorch */
}

/* gelu_tanh(x) = 0.5x(1 + tanh(u)), u = sqrt(2/pi)(x + 0.044715x^3)
 *              = x * sigmoid(2u), free of the 1 + tanh cancellation.
 * 2u = x(c1 + c2 x^2) is formed in double-float so exp(-|2u|) stays
 * accurate up to |2u| ~ 100; e = m*2^n is applied last (no early underflow). */
KN_SCALAR_INLINE float kn_s_gelu_tanh_f32(float x) {
    const float c1h = 0x1.988454p+0f, c1l = -0x1.857936p-25f; /* 2 sqrt(2/pi) */
    const float c2h = 0x1.2444f2p-4f, c2l = 0x1.49b16ap-29f;  /* c1 * 0.044715 */
    float xc = x < -15.0f ? -15.0f : x;
    xc = xc > 15.0f ? 15.0f : xc; /* NaN passes */
    float x2h = xc * xc;
    float x2l = fmaf(xc, xc, -x2h);
    float ph = c2h * x2h;
    float pl = fmaf(c2h, x2h, -ph) + fmaf(c2h, x2l, c2l * x2h);
    float we;
    float wh = kn__two_sum_f32(c1h, ph, &we);
    float wl = we + (c1l + pl);
    float vh = xc * wh;
    float vl = fmaf(xc, wh, -vh) + xc * wl;
    int pos = vh >= 0.0f; /* also x = -0 */
    float zh = pos ? -vh : vh;
    float zl = pos ? -vl : vl;
    kn__i32 n;
    float m = kn__exp_core_f32(zh, zl, &n);
    float e = kn__ldexp_f32(m, n); /* exp(-|2u|) <= 1 */
    float d = 1.0f + e;
    float dl = (1.0f - d) + e;
    float rn = kn__ldexp_f32(kn__div_pair_f32(xc * m, d, dl), n);
    float rp = kn__div_pair_f32(x, d, dl);
    rn = x == -KN__F32_INF ? KN__F32_NAN : rn; /* gelu(-inf) is NaN in PyTorch */
    return pos ? rp : rn;
}

KN_SCALAR_INLINE double kn_s_gelu_tanh_f64(double x) {
    double xc = x < -40.0 ? -40.0 : (x > 40.0 ? 40.0 : x);
    double u2 = 2.0 * 0.79788456080286535588 * (xc + 0.044715 * xc * xc * xc);
    double e = exp(-fabs(u2));
    double num = u2 >= 0.0 ? x : xc * e;
    return x == -KN__F64_INF ? KN__F64_NAN : num / (1.0 + e); /* gelu(-inf) is NaN in PyTorch */
}

/* ------------------------------------------------------------------------ */
/* sin / cos                                                                 */
/* ------------------------------------------------------------------------ */

/* x = k*pi/2 + r, |r| <= pi/4.  pi/2 is split in three floats; with fma
 * x - k*p1 is exact and the other two terms lose < 1 ulp of r.
 * k = rint(x * float(2/pi)) may be off by one for large |x| (the product
 * is rounded), so a second pass on the small r fixes k and r.
 * Range: <= 2 ulp for |x| <= 1e6.  Past that the rounding of x - k*p2
 * shows near the zeros of sin/cos (~10 ulp elsewhere up to 2^23, much more
 * right at the zeros and beyond 2^23); r is clamped so results always stay
 * in [-1, 1].  q = k mod 4 as a float (0..3); inf/NaN give r = NaN. */
KN_SCALAR_INLINE float kn__trig_reduce_f32(float x, float *q) {
    float k = rintf(x * 0x1.45f306p-1f);
    float r = fmaf(-k, 0x1.921fb6p+0f, x);
    r = fmaf(-k, -0x1.777a5cp-25f, r);
    r = fmaf(-k, -0x1.ee59dap-50f, r);
    float k2 = rintf(r * 0x1.45f306p-1f);
    r = fmaf(-k2, 0x1.921fb6p+0f, r);
    r = fmaf(-k2, -0x1.777a5cp-25f, r);
    r = fmaf(-k2, -0x1.ee59dap-50f, r);
    r = r > 0.86f ? 0.86f : r;
    r = r < -0.86f ? -0.86f : r;
    float q1 = k - 4.0f * rintf(k * 0.25f - 0.375f) + k2; /* (k mod 4) + k2 */
    *q = q1 - 4.0f * rintf(q1 * 0.25f - 0.375f);
    return r;
}

/* sin(r) and cos(r) for |r| <= 0.8354 (minimax, rel. err 2^-27, 2^-32) */
KN_SCALAR_INLINE float kn__sin_poly_f32(float r, float z) {
    float p = fmaf(-0x1.985e58p-13f, z, 0x1.110478p-7f);
    p = fmaf(p, z, -0x1.55553ep-3f);
    return fmaf(r * z, p, r);
}
KN_SCALAR_INLINE float kn__cos_poly_f32(float z) {
    float p = fmaf(0x1.99197ap-16f, z, -0x1.6c0932p-10f);
    p = fmaf(p, z, 0x1.555544p-5f);
    p = fmaf(p, z, -0.5f);
    return fmaf(p, z, 1.0f);
}

KN_SCALAR_INLINE float kn_s_sin_f32(float x) {
    float q;
    float r = kn__trig_reduce_f32(x, &q);
    float z = r * r;
    float s = kn__sin_poly_f32(r, z);
    float c = kn__cos_poly_f32(z);
    float v = ((q == 1.0f) | (q == 3.0f)) ? c : s;
    v = q >= 2.0f ? -v : v;
    /* sin(x) rounds to x below 2^-12; keeps -0 and subnormals exact */
    return fabsf(x) < 0x1p-12f ? x : v;
}

KN_SCALAR_INLINE float kn_s_cos_f32(float x) {
    float q;
    float r = kn__trig_reduce_f32(x, &q);
    float z = r * r;
    float s = kn__sin_poly_f32(r, z);
    float c = kn__cos_poly_f32(z);
    float v = ((q == 1.0f) | (q == 3.0f)) ? s : c;
    return ((q == 1.0f) | (q == 2.0f)) ? -v : v;
}

KN_SCALAR_INLINE double kn_s_sin_f64(double x) { return sin(x); }
KN_SCALAR_INLINE double kn_s_cos_f64(double x) { return cos(x); }

/* ------------------------------------------------------------------------ */
/* pow                                                                       */
/* ------------------------------------------------------------------------ */

/* log(a) as hi + lo (about 2^-40 relative) for finite a > 0:
 * log(m) = 2s + (2/3)s^3 + s^5 T(s^2), s = f/(2+f), the first two terms in
 * double-float; e*ln2 with a 15-bit ln2_hi so e*ln2_hi is exact. */
KN_SCALAR_INLINE float kn__log_hilo_f32(float a, float *lo) {
    float ef;
    float m = kn__log_split_f32(a, &ef);
    float f = m - 1.0f;
    float d = 2.0f + f;
    float dl = f - (d - 2.0f); /* exact rounding error of d */
    float inv = 1.0f / d;
    float sh = f * inv;
    float rho = fmaf(-sh, d, f);
    rho = fmaf(-sh, dl, rho);
    float sl = rho * inv;
    float z = sh * sh;
    float zl = fmaf(sh, sh, -z);
    float s3h = z * sh;
    float s3l = fmaf(z, sh, -s3h) + fmaf(zl, sh, 3.0f * z * sl);
    const float c3h = 0x1.555556p-1f, c3l = -0x1.555556p-26f; /* 2/3 */
    float th = c3h * s3h;
    float tl = fmaf(c3h, s3h, -th) + fmaf(c3h, s3l, c3l * s3h);
    /* T(z) minimax on [0, 0.02944]; term is < 2^-14 of the total */
    float T = fmaf(fmaf(0x1.df9d72p-3f, z, 0x1.245296p-2f), z, 0x1.999a00p-2f);
    float s5 = s3h * z * T;
    float h1 = 2.0f * sh + th; /* |2s| > |th|: fast two-sum */
    float e1 = th - (h1 - 2.0f * sh);
    float l1 = e1 + (2.0f * sl + tl + s5);
    float p1 = ef * 0x1.62e4p-1f; /* exact */
    float hi = p1 + h1;           /* |p1| >= 0.69 > |h1| or p1 == 0 */
    float e2 = h1 - (hi - p1);
    *lo = e2 + fmaf(ef, 0x1.7f7d1cp-20f, l1);
    return hi;
}

/* C99/IEEE pow semantics, as torch.pow: pow(x, +-0) = 1, pow(1, y) = 1,
 * NaN otherwise propagates; x < 0 needs integer y (sign from odd y);
 * +-0 and +-inf bases and +-inf exponents follow C99 Annex F.
 * Core: exp(y * log|x|) with y*log|x| carried as double-float (~0.8 ulp);
 * y == 2 and y == 1 return x*x and x exactly. */
KN_SCALAR_INLINE float kn_s_pow_f32(float x, float y) {
    float ax = fabsf(x);
    int ax_special = (ax == 0.0f) | (ax == KN__F32_INF) | (ax != ax);
    float as = ax_special ? 1.0f : ax;
    float ll;
    float lh = kn__log_hilo_f32(as, &ll);
    float zh = y * lh;
    float zl = fmaf(y, lh, -zh) + y * ll;
    zl = fabsf(zh) < 256.0f ? zl : 0.0f; /* zh saturates in exp anyway */
    kn__i32 n;
    float m = kn__exp_core_f32(zh, zl, &n);
    float r = kn__ldexp_f32(m, n);

    float yh = 0.5f * y;
    int y_int = rintf(y) == y;                      /* true for +-inf */
    int y_odd = y_int & (rintf(yh) != yh);          /* false for +-inf */
    int x_neg = (KN__F2U(x) >> 31) != 0;            /* includes -0 */
    int flip = x_neg & y_odd;
    r = flip ? -r : r;
    r = ((x < 0.0f) & !y_int) ? KN__F32_NAN : r;
    float base = ((y > 0.0f) == (ax == KN__F32_INF)) ? KN__F32_INF : 0.0f;
    base = flip ? -base : base;
    r = ((ax == 0.0f) | (ax == KN__F32_INF)) ? base : r;
    float yinf = ((ax < 1.0f) == (y < 0.0f)) ? KN__F32_INF : 0.0f;
    yinf = ax == 1.0f ? 1.0f : yinf;
    r = fabsf(y) == KN__F32_INF ? yinf : r;
    r = ((x != x) | (y != y)) ? x + y : r;
    r = ((y == 0.0f) | (x == 1.0f)) ? 1.0f : r;
    r = y == 2.0f ? x * x : r;
    r = y == 1.0f ? x : r;
    return r;
}

KN_SCALAR_INLINE double kn_s_pow_f64(double x, double y) { return pow(x, y); }

/* ------------------------------------------------------------------------ */
/* elementwise arithmetic                                                    */
/* ------------------------------------------------------------------------ */

/* relu(nan) = nan, relu(-0) = +0 */
KN_SCALAR_INLINE float kn_s_relu_f32(float x) { return ((x > 0.0f) | (x != x)) ? x : 0.0f; }
KN_SCALAR_INLINE double kn_s_relu_f64(double x) { return ((x > 0.0) | (x != x)) ? x : 0.0; }

KN_SCALAR_INLINE float kn_s_neg_f32(float x) { return -x; }
KN_SCALAR_INLINE double kn_s_neg_f64(double x) { return -x; }
KN_SCALAR_INLINE float kn_s_abs_f32(float x) { return fabsf(x); }
KN_SCALAR_INLINE double kn_s_abs_f64(double x) { return fabs(x); }
KN_SCALAR_INLINE float kn_s_sqrt_f32(float x) { return KN__SQRTF(x); }
KN_SCALAR_INLINE double kn_s_sqrt_f64(double x) { return KN__SQRT(x); }
/* exact division of a correctly rounded sqrt (no rsqrt estimate) */
KN_SCALAR_INLINE float kn_s_rsqrt_f32(float x) { return 1.0f / KN__SQRTF(x); }
KN_SCALAR_INLINE double kn_s_rsqrt_f64(double x) { return 1.0 / KN__SQRT(x); }

KN_SCALAR_INLINE float kn_s_add_f32(float a, float b) { return a + b; }
KN_SCALAR_INLINE double kn_s_add_f64(double a, double b) { return a + b; }
KN_SCALAR_INLINE float kn_s_sub_f32(float a, float b) { return a - b; }
KN_SCALAR_INLINE double kn_s_sub_f64(double a, double b) { return a - b; }
KN_SCALAR_INLINE float kn_s_mul_f32(float a, float b) { return a * b; }
KN_SCALAR_INLINE double kn_s_mul_f64(double a, double b) { return a * b; }
KN_SCALAR_INLINE float kn_s_div_f32(float a, float b) { return a / b; }
KN_SCALAR_INLINE double kn_s_div_f64(double a, double b) { return a / b; }

/* torch.maximum/minimum: NaN if either is NaN; on equal inputs the bit-AND
 * (max) / bit-OR (min) picks +0 over -0 like IEEE 754-2019 maximum. */
KN_SCALAR_INLINE float kn_s_maximum_f32(float a, float b) {
    float r = a > b ? a : b;
    r = a == b ? KN__U2F(KN__F2U(a) & KN__F2U(b)) : r;
    return ((a != a) | (b != b)) ? a + b : r;
}
KN_SCALAR_INLINE float kn_s_minimum_f32(float a, float b) {
    float r = a < b ? a : b;
    r = a == b ? KN__U2F(KN__F2U(a) | KN__F2U(b)) : r;
    return ((a != a) | (b != b)) ? a + b : r;
}
KN_SCALAR_INLINE double kn_s_maximum_f64(double a, double b) {
    double r = a > b ? a : b;
    r = a == b ? KN__U2D(KN__D2U(a) & KN__D2U(b)) : r;
    return ((a != a) | (b != b)) ? a + b : r;
}
KN_SCALAR_INLINE double kn_s_minimum_f64(double a, double b) {
    double r = a < b ? a : b;
    r = a == b ? KN__U2D(KN__D2U(a) | KN__D2U(b)) : r;
    return ((a != a) | (b != b)) ? a + b : r;
}

/* torch.clamp: min(max(x, lo), hi); NaN in any argument gives NaN */
KN_SCALAR_INLINE float kn_s_clamp_f32(float x, float lo, float hi) {
    return kn_s_minimum_f32(kn_s_maximum_f32(x, lo), hi);
}
KN_SCALAR_INLINE double kn_s_clamp_f64(double x, double lo, double hi) {
    return kn_s_minimum_f64(kn_s_maximum_f64(x, lo), hi);
}

/* Comparisons and where on booleans held as floats (1.0f true, 0.0f false),
 * the form they take inside fused kernels; IEEE compares, so NaN compares
 * false except under !=. */
#define KN__COMPARE_F32(name, cmp) \
    KN_SCALAR_INLINE float kn_s_##name##_f32(float a, float b) { return (a cmp b) ? 1.0f : 0.0f; }
KN__COMPARE_F32(eq, ==)
KN__COMPARE_F32(ne, !=)
KN__COMPARE_F32(lt, <)
KN__COMPARE_F32(le, <=)
KN__COMPARE_F32(gt, >)
KN__COMPARE_F32(ge, >=)
KN_SCALAR_INLINE float kn_s_where_f32(float c, float a, float b) { return c != 0.0f ? a : b; }

#endif /* KN_CORE_SCALAR_H */
