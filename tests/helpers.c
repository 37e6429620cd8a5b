#include "helpers.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

kn_tensor *load_npy(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char pre[10];
    kn_tensor *t = NULL;
    char *hdr = NULL;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) goto out;
    size_t hlen = pre[8] | (size_t)pre[9] << 8;
    if (pre[6] >= 2) {  /* v2: 4-byte header length */
        unsigned char x[2];
        if (fread(x, 1, 2, f) != 2) goto out;
        hlen = pre[8] | (size_t)pre[9] << 8 | (size_t)x[0] << 16 | (size_t)x[1] << 24;
    }
    hdr = calloc(1, hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) goto out;
    const char *d = strstr(hdr, "'descr': '");
    const char *s = strstr(hdr, "'shape': (");
    if (!d || !s || strstr(hdr, "'fortran_order': True")) goto out;
    d += 10;
    kn_dtype dt;
    if (!strncmp(d, "<f4", 3)) dt = KN_F32;
    else if (!strncmp(d, "<f8", 3)) dt = KN_F64;
    else if (!strncmp(d, "<i8", 3)) dt = KN_I64;
    else if (!strncmp(d, "<i4", 3)) dt = KN_I32;
    else if (!strncmp(d, "|u1", 3) || !strncmp(d, "|b1", 3)) dt = KN_BOOL;
    else goto out;
    int64_t shape[KN_MAX_DIMS];
    int nd = 0;
    for (s += 10; *s && *s != ')';) {
        char *e;
        long long v = strtoll(s, &e, 10);
        if (e == s) { s++; continue; }
        shape[nd++] = v;
        s = e;
    }
    t = kn_empty(shape, nd, dt);
    size_t nbytes = (size_t)kn_numel(t) * kn_dtype_size(dt);
    if (t && fread(kn_data(t), 1, nbytes, f) != nbytes) {
        kn_release(t);
        t = NULL;
    }
out:
    free(hdr);
    fclose(f);
    return t;
}

kn_tensor *golden(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.npy", KN_TESTDATA, name);
    kn_tensor *t = load_npy(path);
    cr_assert(t, "cannot load golden file %s", path);
    return t;
}

double at(const kn_tensor *t, int64_t i) {
    int nd = kn_ndim(t);
    const int64_t *sh = kn_shape(t), *st = kn_strides(t);
    int64_t off = 0;
    for (int d = nd - 1; d >= 0; d--) {
        off += (i % sh[d]) * st[d];
        i /= sh[d];
    }
    const char *p = (const char *)kn_data(t) + off * (int64_t)kn_dtype_size(kn_dtype_of(t));
    switch (kn_dtype_of(t)) {
    case KN_F32: return *(const float *)p;
    case KN_F64: return *(const double *)p;
    case KN_I32: return *(const int32_t *)p;
    case KN_I64: return (double)*(const int64_t *)p;
    default: return *(const uint8_t *)p;
    }
}

static void assert_same_shape(const kn_tensor *got, const kn_tensor *want) {
    cr_assert(got, "result is NULL: %s", kn_last_error() ? kn_last_error() : "(no error)");
    cr_assert_eq(kn_ndim(got), kn_ndim(want), "ndim %d != %d", kn_ndim(got), kn_ndim(want));
    for (int d = 0; d < kn_ndim(got); d++)
        cr_assert_eq(kn_shape(got)[d], kn_shape(want)[d], "dim %d: %lld != %lld", d,
                     (long long)kn_shape(got)[d], (long long)kn_shape(want)[d]);
}

void assert_close(const kn_tensor *got, const kn_tensor *want, double rtol, double atol) {
    assert_same_shape(got, want);
    int64_t n = kn_numel(want);
    for (int64_t i = 0; i < n; i++) {
        double g = at(got, i), w = at(want, i);
        if (isnan(w)) {
            cr_assert(isnan(g), "element %lld: got %.9g, want nan", (long long)i, g);
            continue;
        }
        if (isinf(w)) {
            cr_assert(g == w, "element %lld: got %.9g, want %g", (long long)i, g, w);
            continue;
        }
        cr_assert(fabs(g - w) <= atol + rtol * fabs(w),
                  "element %lld: got %.9g, want %.9g (rtol %g, atol %g)", (long long)i, g, w, rtol, atol);
    }
}

void assert_equal(const kn_tensor *got, const kn_tensor *want) {
    assert_same_shape(got, want);
    cr_assert_eq(kn_dtype_of(got), kn_dtype_of(want), "dtype %s != %s",
                 kn_dtype_name(kn_dtype_of(got)), kn_dtype_name(kn_dtype_of(want)));
    int64_t n = kn_numel(want);
    for (int64_t i = 0; i < n; i++) {
        double g = at(got, i), w = at(want, i);
        cr_assert(memcmp(&g, &w, sizeof g) == 0 || (isnan(g) && isnan(w)),
                  "element %lld: got %.17g, want %.17g", (long long)i, g, w);
    }
}

static int64_t live_at_start;

void test_setup(uint64_t seed) {
    kn_clear_error();
    live_at_start = kn_live_tensors();
    if (seed != KN_NO_SEED) kn_manual_seed(seed);
    kn_pool_push();
}

void test_teardown(void) {
    kn_pool_pop();
    kn_set_num_threads(0);
    cr_assert_eq(kn_live_tensors(), live_at_start, "%lld tensors leaked",
                 (long long)(kn_live_tensors() - live_at_start));
}

void remove_dir(const char *dir) {
    chmod(dir, 0700); /* a test may leave it read-only */
    DIR *d = opendir(dir);
    if (!d) return;
    char p[512];
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

int train_step(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    trainer *t = ctx;
    kn_tensor *loss = kn_cross_entropy(kn_forward(t->model, in[0]), in[1], KN_REDUCE_MEAN);
    kn_optim_zero_grad(t->opt);
    if (!loss || kn_backward(loss, NULL) != 0 || kn_optim_step(t->opt) != 0) return -1;
    out[0] = loss;
    return 0;
}

char *dump_of(const kn_fn *f, void (*dump)(const kn_fn *, FILE *)) {
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    dump(f, m);
    fclose(m);
    return buf;
}
