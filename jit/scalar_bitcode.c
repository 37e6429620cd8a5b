/* Compiled to LLVM bitcode at build time (meson custom_target), embedded in
 * libkiln and linked into every JIT module, so JIT'd kernels evaluate exactly
 * the formulas of core/scalar.h that the eager loops use. One external
 * wrapper per formula: kn_jit_<op>_f32 / _f64. jit/llvm.c makes them
 * internal and always-inline after linking. */
#include "../core/scalar.h"

#define UNARY(name)                                                      \
    float kn_jit_##name##_f32(float x) { return kn_s_##name##_f32(x); }  \
    double kn_jit_##name##_f64(double x) { return kn_s_##name##_f64(x); }
#define BINARY(name)                                                                  \
    float kn_jit_##name##_f32(float a, float b) { return kn_s_##name##_f32(a, b); }   \
    double kn_jit_##name##_f64(double a, double b) { return kn_s_##name##_f64(a, b); }

/* Every elementwise row of core/ops.def that has a one- or two-argument
 * formula (clamp takes its bounds as parameters, so it is absent). */
UNARY(exp) UNARY(log) UNARY(sqrt) UNARY(rsqrt) UNARY(tanh) UNARY(sigmoid)
UNARY(sin) UNARY(cos) UNARY(erf) UNARY(gelu) UNARY(gelu_tanh)
UNARY(neg) UNARY(abs) UNARY(relu)
BINARY(add) BINARY(sub) BINARY(mul) BINARY(div) BINARY(pow)
BINARY(maximum) BINARY(minimum)

/* Booleans inside kernels are floats (core/scalar.h): f32 wrappers only. */
#define COMPARE(name) \
    float kn_jit_##name##_f32(float a, float b) { return kn_s_##name##_f32(a, b); }
COMPARE(eq) COMPARE(ne) COMPARE(lt) COMPARE(le) COMPARE(gt) COMPARE(ge)
float kn_jit_where_f32(float c, float a, float b) { return kn_s_where_f32(c, a, b); }
/* exp of x - max(row) (kn_jit_step.nonpos) */
float kn_jit_exp_nonpos_f32(float x) { return kn_s_exp_nonpos_f32(x); }

