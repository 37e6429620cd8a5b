/* Shared test utilities: .npy loading and tensor comparison. */
#ifndef KN_TEST_HELPERS_H
#define KN_TEST_HELPERS_H
#include <criterion/criterion.h>
#include <kiln.h>
#include <string.h>

/* Loads a .npy file (f4, f8, i8, u1/b1 -> bool) as a new tensor; NULL if missing. */
kn_tensor *load_npy(const char *path);
/* Loads <KN_TESTDATA>/<name>.npy */
kn_tensor *golden(const char *name);
/* Asserts same shape and |got - want| <= atol + rtol * |want| elementwise (NaNs must match). */
void assert_close(const kn_tensor *got, const kn_tensor *want, double rtol, double atol);
/* Asserts bitwise equality of values (same dtype and shape). */
void assert_equal(const kn_tensor *got, const kn_tensor *want);
/* Element i (C order) of t as double. */
double at(const kn_tensor *t, int64_t i);
/* A new f32 / f64 tensor from a literal list. */
/* Suite fixtures: each test starts with no error, an open pool and (unless
 * seed is KN_NO_SEED) a seeded Philox stream, and must release every tensor. */
#define KN_NO_SEED UINT64_MAX
void test_setup(uint64_t seed);
void test_teardown(void);
/* Removes a directory of plain files (a test's private kernel cache). */
void remove_dir(const char *dir);
/* A model and its optimizer (p: its parameters, where a test keeps them). */
typedef struct { kn_module *model; kn_optim *opt; kn_tensor *p[4]; } trainer;
/* A kn_body for a whole train step on ctx, a trainer: forward, mean
 * cross-entropy against in[1], zero_grad, backward, optimizer step. */
int train_step(void *ctx, kn_tensor *const *in, kn_tensor **out);
/* What dump (kn_fn_dump, kn_fn_dot) prints for f; free() it. */
char *dump_of(const kn_fn *f, void (*dump)(const kn_fn *, FILE *));
#define KN_SUITE(name, seed)                                                      \
    static void name##_setup(void) { test_setup(seed); }                          \
    TestSuite(name, .init = name##_setup, .fini = test_teardown)
/* expr must return NULL and set an error containing text. */
#define EXPECT_ERR(expr, text)                                                    \
    do {                                                                          \
        kn_clear_error();                                                         \
        cr_assert_null((expr), #expr " should fail");                             \
        cr_assert(kn_last_error(), #expr " set no error");                        \
        cr_assert(strstr(kn_last_error(), text), "message '%s' lacks '%s'",       \
                  kn_last_error(), text);                                         \
    } while (0)
#define TF32(shape_ndim, ...) kn_from_data((const float[]){__VA_ARGS__}, shape_ndim, KN_F32)
#define TF64(shape_ndim, ...) kn_from_data((const double[]){__VA_ARGS__}, shape_ndim, KN_F64)
#define TI64(shape_ndim, ...) kn_from_data((const int64_t[]){__VA_ARGS__}, shape_ndim, KN_I64)
#endif
