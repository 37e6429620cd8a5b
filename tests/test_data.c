/* Data loading: IDX files written here (plain and gzip) read back exactly,
 * every corruption gives an error naming kn_load_idx and the file, and the
 * mini-batch loader visits each row once per epoch, reproducibly. */
#include "helpers.h"
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static int64_t live0;
static char dir[64];

static void setup(void) {
    kn_clear_error();
    live0 = kn_live_tensors();
    dir[0] = 0;
    kn_pool_push();
}

/* The test's scratch directory, made on first use. */
static const char *tdir(void) {
    if (!dir[0]) {
        strcpy(dir, "/tmp/kiln-data-XXXXXX");
        cr_assert(mkdtemp(dir), "mkdtemp failed");
    }
    return dir;
}

static void teardown(void) {
    kn_pool_pop();
    DIR *d = dir[0] ? opendir(dir) : NULL;
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (e->d_name[0] != '.') unlink(p);
    }
    if (d) closedir(d);
    if (dir[0]) rmdir(dir);
    cr_assert_eq(kn_live_tensors(), live0);
}
TestSuite(data, .init = setup, .fini = teardown);

/* ---- writing IDX files ---- */

/* dir/name in one of a few static buffers, so a test can hold several. */
static const char *tpath(const char *name) {
    static char bufs[4][512];
    static int k;
    char *p = bufs[k++ % 4];
    snprintf(p, 512, "%s/%s", tdir(), name);
    return p;
}

static const char *write_file(const char *name, const void *bytes, size_t n, bool gz) {
    const char *p = tpath(name);
    if (gz) {
        gzFile f = gzopen(p, "wb");
        cr_assert(f);
        cr_assert_eq(gzwrite(f, bytes, (unsigned)n), (int)n);
        gzclose(f);
    } else {
        FILE *f = fopen(p, "wb");
        cr_assert(f);
        cr_assert_eq(fwrite(bytes, 1, n, f), n);
        fclose(f);
    }
    return p;
}

static unsigned char *be32(unsigned char *o, uint32_t u) {
    o[0] = u >> 24; o[1] = u >> 16; o[2] = u >> 8; o[3] = u;
    return o + 4;
}

/* Header (type, dims) then payload into out; returns the length. */
static size_t idx_bytes(unsigned char *out, int type, int ndim, const uint32_t *dims,
                        const void *payload, size_t plen) {
    unsigned char *o = out;
    *o++ = 0; *o++ = 0; *o++ = (unsigned char)type; *o++ = (unsigned char)ndim;
    for (int i = 0; i < ndim; i++) o = be32(o, dims[i]);
    if (plen) memcpy(o, payload, plen);
    return (size_t)(o - out) + plen;
}

static const char *write_idx(const char *name, bool gz, int type, int ndim, const uint32_t *dims,
                             const void *payload, size_t plen) {
    unsigned char buf[4096];
    cr_assert_leq(plen, sizeof buf - 40);
    return write_file(name, buf, idx_bytes(buf, type, ndim, dims, payload, plen), gz);
}

static void assert_shape(const kn_tensor *t, const int64_t *shape, int ndim) {
    cr_assert(t, "NULL tensor: %s", kn_last_error() ? kn_last_error() : "(no error)");
    cr_assert_eq(kn_ndim(t), ndim);
    for (int i = 0; i < ndim; i++) cr_assert_eq(kn_shape(t)[i], shape[i], "dim %d", i);
}

static void assert_error(const char *a, const char *b) {
    const char *e = kn_last_error();
    cr_assert(e, "no error set");
    cr_assert(strstr(e, a), "error \"%s\" lacks \"%s\"", e, a);
    if (b) cr_assert(strstr(e, b), "error \"%s\" lacks \"%s\"", e, b);
}

/* ---- reading back every element type ---- */

Test(data, u8_plain_and_gzip) {
    const unsigned char v[6] = {0, 1, 2, 127, 200, 255};
    for (int gz = 0; gz < 2; gz++) {
        const char *p = write_idx(gz ? "u8.gz" : "u8", gz, 0x08, 2, (uint32_t[]){2, 3}, v, 6);
        kn_tensor *f = kn_load_idx(p, KN_F32);
        kn_tensor *l = kn_load_idx(p, KN_I64);
        assert_shape(f, KN_SHAPE(2, 3));
        assert_shape(l, KN_SHAPE(2, 3));
        cr_assert_eq(kn_dtype_of(f), KN_F32);
        for (int i = 0; i < 6; i++) {
            cr_assert_eq(at(f, i), v[i]);
            cr_assert_eq(((int64_t *)kn_data(l))[i], v[i]);
        }
    }
}

Test(data, gzip_is_found_by_magic_not_name) {
    const unsigned char v[3] = {7, 8, 9};
    const char *p = write_idx("no-suffix", true, 0x08, 1, (uint32_t[]){3}, v, 3);
    kn_tensor *t = kn_load_idx(p, KN_I32);
    assert_shape(t, KN_SHAPE(3));
    cr_assert_eq(at(t, 2), 9);
}

Test(data, i32_is_big_endian) {
    const int32_t v[5] = {1, -2, 0x01020304, INT32_MIN, INT32_MAX};
    unsigned char b[20];
    for (int i = 0; i < 5; i++) be32(b + 4 * i, (uint32_t)v[i]);
    for (int gz = 0; gz < 2; gz++) {
        const char *p = write_idx("i32", gz, 0x0C, 1, (uint32_t[]){5}, b, 20);
        kn_tensor *a = kn_load_idx(p, KN_I32);
        kn_tensor *w = kn_load_idx(p, KN_I64);
        assert_shape(a, KN_SHAPE(5));
        for (int i = 0; i < 5; i++) {
            cr_assert_eq(((int32_t *)kn_data(a))[i], v[i], "element %d", i);
            cr_assert_eq(((int64_t *)kn_data(w))[i], v[i], "element %d", i);
        }
    }
}

Test(data, f32_is_big_endian_and_exact) {
    const float v[6] = {1.5f, -0.25f, 3.4e38f, 1e-45f, 0.1f, -0.0f};
    unsigned char b[24];
    for (int i = 0; i < 6; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        be32(b + 4 * i, u);
    }
    const char *p = write_idx("f32.gz", true, 0x0D, 3, (uint32_t[]){1, 2, 3}, b, 24);
    kn_tensor *a = kn_load_idx(p, KN_F32);
    kn_tensor *d = kn_load_idx(p, KN_F64);
    assert_shape(a, KN_SHAPE(1, 2, 3));
    cr_assert_eq(memcmp(kn_data(a), v, sizeof v), 0, "f32 values differ bitwise");
    for (int i = 0; i < 6; i++) cr_assert_eq(((double *)kn_data(d))[i], (double)v[i]);
}

Test(data, i8_i16_f64_types) {
    const unsigned char i8[3] = {0x80, 0x7F, 0xFF};             /* -128, 127, -1 */
    const unsigned char i16[4] = {0x80, 0x00, 0x01, 0x02};      /* -32768, 258 */
    const unsigned char f64[8] = {0x3F, 0xB9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9A}; /* 0.1 */
    kn_tensor *a = kn_load_idx(write_idx("i8", false, 0x09, 1, (uint32_t[]){3}, i8, 3), KN_F64);
    kn_tensor *b = kn_load_idx(write_idx("i16", false, 0x0B, 1, (uint32_t[]){2}, i16, 4), KN_I32);
    kn_tensor *c = kn_load_idx(write_idx("f64", false, 0x0E, 1, (uint32_t[]){1}, f64, 8), KN_F64);
    assert_shape(a, KN_SHAPE(3));
    cr_assert(at(a, 0) == -128 && at(a, 1) == 127 && at(a, 2) == -1);
    cr_assert(at(b, 0) == -32768 && at(b, 1) == 258);
    cr_assert_eq(at(c, 0), 0.1);
}

Test(data, float_to_int_saturates_and_bool) {
    const float v[6] = {NAN, 1e30f, -1e30f, 2.7f, -2.7f, 0.0f};
    unsigned char b[24];
    for (int i = 0; i < 6; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        be32(b + 4 * i, u);
    }
    const char *p = write_idx("sat", false, 0x0D, 1, (uint32_t[]){6}, b, 24);
    kn_tensor *a = kn_load_idx(p, KN_I32);
    kn_tensor *l = kn_load_idx(p, KN_I64);
    kn_tensor *t = kn_load_idx(p, KN_BOOL);
    const int32_t want[6] = {0, INT32_MAX, INT32_MIN, 2, -2, 0};
    const int64_t want64[6] = {0, INT64_MAX, INT64_MIN, 2, -2, 0};
    const uint8_t wantb[6] = {1, 1, 1, 1, 1, 0};  /* NaN != 0 */
    cr_assert_eq(memcmp(kn_data(a), want, sizeof want), 0);
    cr_assert_eq(memcmp(kn_data(l), want64, sizeof want64), 0);
    cr_assert_eq(memcmp(kn_data(t), wantb, sizeof wantb), 0);
}

Test(data, zero_size_dim_gives_empty_tensor) {
    kn_tensor *t = kn_load_idx(write_idx("empty", true, 0x08, 2, (uint32_t[]){0, 5}, NULL, 0), KN_F32);
    assert_shape(t, KN_SHAPE(0, 5));
    cr_assert_eq(kn_numel(t), 0);
}

/* ---- every corruption is an error naming kn_load_idx and the file ---- */

/* Loads p, expects NULL, an error with kn_load_idx, p and what, and no new tensors. */
static void expect_bad(const char *p, const char *what) {
    int64_t live = kn_live_tensors();
    kn_clear_error();
    cr_assert_null(kn_load_idx(p, KN_F32), "%s loaded", p);
    assert_error("kn_load_idx", p);
    if (what) assert_error(what, NULL);
    cr_assert_eq(kn_live_tensors(), live);
}

Test(data, missing_file) {
    expect_bad(tpath("nope.gz"), "cannot open");
    expect_bad(tdir(), NULL);  /* a directory */
}

Test(data, bad_magic) {
    const unsigned char b[8] = {0x01, 0x00, 0x08, 0x01, 0, 0, 0, 0};
    expect_bad(write_file("magic", b, 8, false), "bad magic");
    expect_bad(write_file("text.gz", "hello, world\n", 13, true), "bad magic");
}

Test(data, unknown_type_code) {
    for (int i = 0; i < 3; i++) {
        int type = (int[]){0x0A, 0x07, 0xFF}[i];
        expect_bad(write_idx("type", i & 1, type, 1, (uint32_t[]){1}, "x", 1), "unknown IDX element type");
    }
}

Test(data, bad_ndim) {
    expect_bad(write_idx("nd0", false, 0x08, 0, NULL, "x", 1), "0 dims");
    uint32_t dims[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    expect_bad(write_idx("nd9", true, 0x08, 9, dims, "x", 1), "9 dims");
}

Test(data, overflowing_or_absurd_dims) {
    expect_bad(write_idx("ovf", false, 0x0E, 3, (uint32_t[]){0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, NULL, 0),
               "more than 2^36 bytes");
    expect_bad(write_idx("absurd", true, 0x08, 3, (uint32_t[]){100000, 100000, 100}, NULL, 0),
               "more than 2^36 bytes");
    /* 4 GiB claimed, under the cap: fails at the file's real end, not in malloc. */
    expect_bad(write_idx("big", false, 0x08, 1, (uint32_t[]){0xFFFFFFFF}, "abc", 3), "truncated");
}

Test(data, truncated_header_and_data) {
    expect_bad(write_file("empty", "", 0, false), "truncated");
    expect_bad(write_file("short", "\0\0", 2, true), "truncated");
    expect_bad(write_file("dims", "\0\0\x08\x03\0\0\0\x02\0\0", 10, false), "truncated");
    const unsigned char v[5] = {1, 2, 3, 4, 5};
    expect_bad(write_idx("data", false, 0x08, 2, (uint32_t[]){2, 3}, v, 5), "truncated");
    expect_bad(write_idx("data.gz", true, 0x0C, 1, (uint32_t[]){2}, v, 5), "truncated");
}

/* A gzip file cut short or with flipped bytes: inflate or its CRC check fails. */
Test(data, corrupt_gzip_stream) {
    unsigned char payload[2000];
    for (int i = 0; i < 2000; i++) payload[i] = (unsigned char)(i * 7 % 251);
    const char *p = write_idx("good.gz", true, 0x08, 1, (uint32_t[]){2000}, payload, 2000);
    FILE *f = fopen(p, "rb");
    unsigned char z[4096];
    size_t n = fread(z, 1, sizeof z, f);
    fclose(f);
    cr_assert(n > 40 && n < sizeof z);
    kn_tensor *ok = kn_load_idx(p, KN_F32);
    cr_assert(ok, "%s", kn_last_error());
    expect_bad(write_file("cut.gz", z, n / 2, false), NULL);
    expect_bad(write_file("notrailer.gz", z, n - 8, false), "gzip");
    z[n - 6] ^= 0x55;  /* the stored CRC */
    expect_bad(write_file("badcrc.gz", z, n, false), "incorrect data check");
    z[n - 6] ^= 0x55;
    z[n / 2] ^= 0xFF;  /* compressed data */
    expect_bad(write_file("flipped.gz", z, n, false), NULL);
}

Test(data, null_path_and_bad_dtype) {
    cr_assert_null(kn_load_idx(NULL, KN_F32));
    assert_error("kn_load_idx", NULL);
    kn_clear_error();
    cr_assert_null(kn_load_idx(write_idx("ok", false, 0x08, 1, (uint32_t[]){1}, "x", 1), KN_DTYPE_COUNT));
    assert_error("kn_load_idx", "dtype");
}

/* ---- Fashion-MNIST layout, on a synthetic set ---- */

/* Writes n images of 2x3 pixels (pixel = 40 * image + pixel) and n labels. */
static void write_set(const char *set, int n_images, int n_labels, bool gz) {
    unsigned char px[64 * 6], lb[64];
    for (int i = 0; i < n_images * 6; i++) px[i] = (unsigned char)(40 * (i / 6) + i % 6);
    for (int i = 0; i < n_labels; i++) lb[i] = (unsigned char)(i % 10);
    char name[64];
    snprintf(name, sizeof name, "%s-images-idx3-ubyte%s", set, gz ? ".gz" : "");
    write_idx(name, gz, 0x08, 3, (uint32_t[]){n_images, 2, 3}, px, (size_t)n_images * 6);
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte", set);  /* plain name, always */
    write_idx(name, false, 0x08, 1, (uint32_t[]){n_labels}, lb, (size_t)n_labels);
}

Test(data, fashion_layout_scaled_images_and_i64_labels) {
    write_set("train", 5, 5, true);
    write_set("t10k", 3, 3, false);
    kn_tensor *x, *y;
    cr_assert_eq(kn_fashion_mnist(tdir(), true, &x, &y), 0, "%s", kn_last_error());
    assert_shape(x, KN_SHAPE(5, 6));
    assert_shape(y, KN_SHAPE(5));
    cr_assert_eq(kn_dtype_of(x), KN_F32);
    cr_assert_eq(kn_dtype_of(y), KN_I64);
    for (int i = 0; i < 30; i++) cr_assert_eq(at(x, i), (float)(40 * (i / 6) + i % 6) / 255.0f);
    for (int i = 0; i < 5; i++) cr_assert_eq(((int64_t *)kn_data(y))[i], i);
    cr_assert_eq(kn_fashion_mnist(tdir(), false, &x, &y), 0, "%s", kn_last_error());
    assert_shape(x, KN_SHAPE(3, 6));
    cr_assert_eq(at(x, 17), 85 / 255.0f);
}

Test(data, fashion_missing_says_how_to_install) {
    kn_tensor *x = (kn_tensor *)1, *y = (kn_tensor *)1;
    cr_assert_eq(kn_fashion_mnist(tdir(), true, &x, &y), -1);
    cr_assert(!x && !y);
    assert_error("kn_fashion_mnist", "sudo apt-get install dataset-fashion-mnist");
    assert_error("train-images-idx3-ubyte", tdir());
}

Test(data, fashion_counts_and_types_checked) {
    write_set("train", 4, 3, false);
    kn_tensor *x, *y;
    cr_assert_eq(kn_fashion_mnist(tdir(), true, &x, &y), -1);
    assert_error("4 images", "3 labels");
    /* i32 labels are not the format */
    write_set("t10k", 2, 2, false);
    const unsigned char b[8] = {0};
    write_idx("t10k-labels-idx1-ubyte", false, 0x0C, 1, (uint32_t[]){2}, b, 8);
    kn_clear_error();
    cr_assert_eq(kn_fashion_mnist(tdir(), false, &x, &y), -1);
    assert_error("t10k-labels-idx1-ubyte", "u8 labels");
}

/* The installed data set (Debian package dataset-fashion-mnist). */
Test(data, real_fashion_mnist, .timeout = 120) {
    if (access(KN_FASHION_MNIST_DIR, F_OK) != 0) {
        const char *req = getenv("KN_REQUIRE_DATA");
        if (req && !strcmp(req, "1"))
            cr_assert_fail("KN_REQUIRE_DATA=1 but %s is missing: "
                           "sudo apt-get install dataset-fashion-mnist", KN_FASHION_MNIST_DIR);
        cr_skip_test("%s not installed (sudo apt-get install dataset-fashion-mnist; "
                     "KN_REQUIRE_DATA=1 makes this a failure)", KN_FASHION_MNIST_DIR);
    }
    for (int train = 1; train >= 0; train--) {
        kn_tensor *x, *y;
        cr_assert_eq(kn_fashion_mnist(NULL, train, &x, &y), 0, "%s", kn_last_error());
        int64_t n = train ? 60000 : 10000;
        assert_shape(x, KN_SHAPE(n, 784));
        assert_shape(y, KN_SHAPE(n));
        const float *px = kn_data(x);
        float lo = 1, hi = 0;
        for (int64_t i = 0; i < n * 784; i++) {
            lo = fminf(lo, px[i]);
            hi = fmaxf(hi, px[i]);
        }
        cr_assert(lo == 0 && hi == 1, "pixels in [%g, %g]", lo, hi);
        int64_t count[10] = {0};
        const int64_t *lb = kn_data(y);
        for (int64_t i = 0; i < n; i++) {
            cr_assert(lb[i] >= 0 && lb[i] <= 9, "label %lld", (long long)lb[i]);
            count[lb[i]]++;
        }
        for (int c = 0; c < 10; c++) cr_assert_eq(count[c], n / 10, "class %d", c);  /* balanced */
        kn_release(x);
        kn_release(y);
    }
}

/* ---- kn_normalize ---- */

Test(data, normalize_values) {
    kn_tensor *x = TF32(KN_SHAPE(2, 2), 0.0f, 0.5f, 1.0f, 0.2860f);
    kn_tensor *z = kn_normalize(x, 0.5, 0.25);
    assert_shape(z, KN_SHAPE(2, 2));
    cr_assert_eq(kn_dtype_of(z), KN_F32);
    const double want[4] = {-2, 0, 2, (0.2860 - 0.5) / 0.25};
    for (int i = 0; i < 4; i++) cr_assert(fabs(at(z, i) - want[i]) < 1e-6, "%g vs %g", at(z, i), want[i]);
    kn_tensor *d = kn_normalize(TF64(KN_SHAPE(2), 0.2860, 1.0), 0.2860, 0.3530);
    cr_assert_eq(kn_dtype_of(d), KN_F64);
    cr_assert(fabs(at(d, 0)) < 1e-15 && fabs(at(d, 1) - (1 - 0.2860) / 0.3530) < 1e-15);
    kn_tensor *i = kn_normalize(TI64(KN_SHAPE(2), 3, 5), 1, 2);
    cr_assert_eq(kn_dtype_of(i), KN_F32);
    cr_assert(at(i, 0) == 1 && at(i, 1) == 2);
}

Test(data, normalize_errors) {
    kn_tensor *x = TF32(KN_SHAPE(1), 1.0f);
    cr_assert_null(kn_normalize(x, 0, 0));
    assert_error("kn_normalize", "std");
    kn_clear_error();
    cr_assert_null(kn_normalize(x, NAN, 1));
    assert_error("kn_normalize", NULL);
    kn_clear_error();
    cr_assert_null(kn_normalize(NULL, 0, 1));
    assert_error("kn_normalize", NULL);
}

/* ---- the loader ---- */

/* x [n, 3] with row i = (i, i + 0.5, -i); y [n] = i. */
static void make_rows(int64_t n, kn_tensor **x, kn_tensor **y) {
    *x = kn_empty(KN_SHAPE(n, 3), KN_F32);
    *y = kn_empty(KN_SHAPE(n), KN_I64);
    float *xp = kn_data(*x);
    int64_t *yp = kn_data(*y);
    for (int64_t i = 0; i < n; i++) {
        xp[3 * i] = (float)i; xp[3 * i + 1] = (float)i + 0.5f; xp[3 * i + 2] = -(float)i;
        yp[i] = i;
    }
}

/* Runs one epoch: checks batch sizes and x/y pairing, writes the row order to
 * order (if not NULL) and returns the number of rows seen. */
static int64_t run_epoch(kn_loader *l, int64_t bs, int64_t n, int64_t *order) {
    kn_tensor *xb, *yb;
    int64_t seen = 0, batches = 0;
    while (kn_loader_next(l, &xb, &yb)) {
        int64_t b = kn_shape(xb)[0];
        cr_assert(b == bs || (b == n % bs && batches == kn_loader_batches(l) - 1),
                  "batch %lld has %lld rows", (long long)batches, (long long)b);
        assert_shape(xb, KN_SHAPE(b, 3));
        assert_shape(yb, KN_SHAPE(b));
        cr_assert(kn_is_contiguous(xb));
        const float *xp = kn_data(xb);
        const int64_t *yp = kn_data(yb);
        for (int64_t i = 0; i < b; i++) {
            int64_t r = yp[i];
            cr_assert(xp[3 * i] == r && xp[3 * i + 1] == r + 0.5f && xp[3 * i + 2] == -r,
                      "x and y rows unpaired at %lld", (long long)r);
            if (order) order[seen] = r;
            seen++;
        }
        kn_release(xb);
        kn_release(yb);
        batches++;
    }
    cr_assert_null(xb);
    cr_assert_eq(batches, kn_loader_batches(l));
    cr_assert(!kn_loader_next(l, &xb, &yb), "next after the end");
    cr_assert_null(kn_last_error());
    return seen;
}

static bool is_permutation(const int64_t *order, int64_t n) {
    char seen[1000] = {0};
    for (int64_t i = 0; i < n; i++) {
        if (order[i] < 0 || order[i] >= n || seen[order[i]]) return false;
        seen[order[i]] = 1;
    }
    return true;
}

Test(data, loader_visits_every_row_once_per_epoch) {
    kn_tensor *x, *y;
    make_rows(103, &x, &y);
    kn_loader *l = kn_loader_new(x, y, 10, true, false, 42);
    cr_assert(l);
    cr_assert_eq(kn_loader_batches(l), 11);
    int64_t order[3][103];
    for (int e = 0; e < 3; e++) {
        cr_assert_eq(run_epoch(l, 10, 103, order[e]), 103);
        cr_assert(is_permutation(order[e], 103), "epoch %d", e);
        kn_loader_reset(l);
    }
    cr_assert(memcmp(order[0], order[1], sizeof order[0]) != 0, "epochs 0 and 1 agree");
    cr_assert(memcmp(order[1], order[2], sizeof order[0]) != 0, "epochs 1 and 2 agree");
    int64_t ident = 0;
    for (int i = 0; i < 103; i++) ident += order[0][i] == i;
    cr_assert_lt(ident, 10, "epoch 0 is barely shuffled");
    kn_loader_free(l);
}

/* Rows of 3 KiB in batches of 64: the threads gather a batch between them. */
Test(data, loader_gathers_wide_rows_on_threads) {
    const int64_t n = 300, c = 784;
    kn_tensor *x = kn_empty(KN_SHAPE(n, c), KN_F32), *y = kn_arange(0, (double)n, 1, KN_I64);
    float *xp = kn_data(x);
    for (int64_t i = 0; i < n * c; i++) xp[i] = (float)(i / c) + (float)(i % c) * 1e-3f;
    kn_loader *l = kn_loader_new(x, y, 64, true, false, 7);
    kn_tensor *xb, *yb;
    int64_t seen = 0;
    while (kn_loader_next(l, &xb, &yb)) {
        const float *bp = kn_data(xb);
        const int64_t *yp = kn_data(yb);
        for (int64_t i = 0; i < kn_shape(xb)[0]; i++, seen++)
            cr_assert(memcmp(bp + i * c, xp + yp[i] * c, (size_t)c * sizeof *bp) == 0, "row %lld of batch", (long long)i);
        kn_release(xb);
        kn_release(yb);
    }
    cr_assert_eq(seen, n);
    kn_loader_free(l);
}

Test(data, loader_reproducible_per_seed) {
    kn_tensor *x, *y;
    make_rows(50, &x, &y);
    kn_loader *a = kn_loader_new(x, y, 7, true, false, 1234);
    kn_loader *b = kn_loader_new(x, y, 7, true, false, 1234);
    kn_loader *c = kn_loader_new(x, y, 7, true, false, 1235);
    kn_manual_seed(99);  /* the global stream must not matter */
    kn_tensor *r = kn_rand(KN_SHAPE(10), KN_F32);
    cr_assert(r);
    for (int e = 0; e < 3; e++) {
        int64_t oa[50], ob[50], oc[50];
        run_epoch(a, 7, 50, oa);
        run_epoch(b, 7, 50, ob);
        run_epoch(c, 7, 50, oc);
        cr_assert(memcmp(oa, ob, sizeof oa) == 0, "same seed, epoch %d differs", e);
        cr_assert(memcmp(oa, oc, sizeof oa) != 0, "seeds 1234 and 1235 agree at epoch %d", e);
        kn_loader_reset(a);
        kn_loader_reset(b);
        kn_loader_reset(c);
    }
    kn_loader_free(a);
    kn_loader_free(b);
    kn_loader_free(c);
}

Test(data, loader_reset_mid_epoch_starts_next_epoch) {
    kn_tensor *x, *y, *xb, *yb;
    make_rows(40, &x, &y);
    kn_loader *a = kn_loader_new(x, y, 8, true, false, 5);
    kn_loader *b = kn_loader_new(x, y, 8, true, false, 5);
    cr_assert(kn_loader_next(a, &xb, &yb));  /* half an epoch, then reset */
    cr_assert(kn_loader_next(a, &xb, &yb));
    kn_loader_reset(a);
    kn_loader_reset(b);
    int64_t oa[40], ob[40];
    run_epoch(a, 8, 40, oa);
    run_epoch(b, 8, 40, ob);
    cr_assert(memcmp(oa, ob, sizeof oa) == 0);
    kn_loader_free(a);
    kn_loader_free(b);
}

Test(data, loader_partial_batch_and_drop_last) {
    kn_tensor *x, *y;
    make_rows(103, &x, &y);
    kn_loader *l = kn_loader_new(x, y, 10, true, true, 3);
    cr_assert_eq(kn_loader_batches(l), 10);
    int64_t order[103];
    cr_assert_eq(run_epoch(l, 10, 103, order), 100);
    char seen[103] = {0};
    for (int i = 0; i < 100; i++) {
        cr_assert(!seen[order[i]]);
        seen[order[i]] = 1;
    }
    kn_loader_free(l);
    /* batch larger than the set: one partial batch, or none with drop_last */
    l = kn_loader_new(x, y, 500, false, false, 0);
    cr_assert_eq(kn_loader_batches(l), 1);
    cr_assert_eq(run_epoch(l, 500, 103, NULL), 103);
    kn_loader_free(l);
    l = kn_loader_new(x, y, 500, false, true, 0);
    cr_assert_eq(kn_loader_batches(l), 0);
    cr_assert_eq(run_epoch(l, 500, 103, NULL), 0);
    kn_loader_free(l);
    /* an exact multiple: drop_last changes nothing */
    kn_tensor *x2, *y2;
    make_rows(100, &x2, &y2);
    l = kn_loader_new(x2, y2, 25, true, true, 3);
    cr_assert_eq(kn_loader_batches(l), 4);
    cr_assert_eq(run_epoch(l, 25, 100, NULL), 100);
    kn_loader_free(l);
}

Test(data, loader_without_shuffle_keeps_order) {
    kn_tensor *x, *y;
    make_rows(23, &x, &y);
    kn_loader *l = kn_loader_new(x, y, 5, false, false, 9);
    int64_t order[23];
    for (int e = 0; e < 2; e++) {
        cr_assert_eq(run_epoch(l, 5, 23, order), 23);
        for (int i = 0; i < 23; i++) cr_assert_eq(order[i], i);
        kn_loader_reset(l);
    }
    kn_loader_free(l);
}

/* Every ordering of 4 rows equally likely: chi-square over 24 orders in 24000 epochs. */
Test(data, loader_shuffle_is_uniform) {
    kn_tensor *x, *y, *xb, *yb;
    make_rows(4, &x, &y);
    kn_loader *l = kn_loader_new(x, y, 4, true, false, 2024);
    int64_t count[256] = {0};
    const int epochs = 24000;
    for (int e = 0; e < epochs; e++) {
        kn_pool_push();
        cr_assert(kn_loader_next(l, &xb, &yb));
        const int64_t *p = kn_data(yb);
        count[p[0] * 64 + p[1] * 16 + p[2] * 4 + p[3]]++;
        kn_pool_pop();
        kn_loader_reset(l);
    }
    double chi2 = 0, want = epochs / 24.0;
    int orders = 0;
    for (int k = 0; k < 256; k++) {
        if (!count[k]) continue;
        orders++;
        chi2 += (count[k] - want) * (count[k] - want) / want;
    }
    cr_assert_eq(orders, 24);
    cr_assert_lt(chi2, 60, "chi-square %g with 23 dof", chi2);  /* p < 1e-4 */
    kn_loader_free(l);
}

Test(data, loader_holds_its_tensors_and_pools_free_batches) {
    kn_tensor *x, *y, *xb, *yb;
    make_rows(30, &x, &y);
    kn_tensor *xk = kn_keep(x), *yk = kn_keep(y);
    kn_loader *l = kn_loader_new(xk, yk, 8, true, false, 1);
    kn_release(xk);  /* the loader keeps them alive */
    kn_release(yk);
    int64_t live = kn_live_tensors();
    for (int e = 0; e < 2; e++) {
        while (kn_pool_push(), kn_loader_next(l, &xb, &yb)) {
            cr_assert(kn_normalize(xb, 1, 2));
            kn_pool_pop();
            cr_assert_eq(kn_live_tensors(), live, "a step leaked");
        }
        kn_pool_pop();
        kn_loader_reset(l);
    }
    kn_loader_free(l);
    cr_assert_eq(kn_live_tensors(), live - 2);
}

Test(data, loader_strided_input_and_no_labels) {
    kn_tensor *t = kn_arange(0, 30, 1, KN_F64);                  /* rows of 3: i*3 .. */
    kn_tensor *x = kn_transpose(kn_reshape(t, KN_SHAPE(3, 10)), 0, 1);  /* [10, 3], strided */
    cr_assert(x && !kn_is_contiguous(x));
    kn_loader *l = kn_loader_new(x, NULL, 4, false, false, 0);
    kn_tensor *xb, *yb = (kn_tensor *)1;
    cr_assert(kn_loader_next(l, &xb, &yb));
    cr_assert_null(yb);
    assert_shape(xb, KN_SHAPE(4, 3));
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) cr_assert_eq(at(xb, i * 3 + j), j * 10 + i);
    kn_loader_free(l);
}

Test(data, loader_empty_set) {
    kn_tensor *x, *y, *xb, *yb;
    make_rows(0, &x, &y);
    kn_loader *l = kn_loader_new(x, y, 4, true, false, 0);
    cr_assert(l);
    cr_assert_eq(kn_loader_batches(l), 0);
    cr_assert(!kn_loader_next(l, &xb, &yb));
    kn_loader_reset(l);
    kn_loader_free(l);
    cr_assert_null(kn_last_error());
}

Test(data, loader_errors) {
    kn_tensor *x, *y, *xb;
    make_rows(10, &x, &y);
    cr_assert_null(kn_loader_new(x, y, 0, true, false, 0));
    assert_error("kn_loader_new", "batch_size");
    kn_clear_error();
    cr_assert_null(kn_loader_new(x, kn_slice(y, 0, 0, 9, 1), 2, true, false, 0));
    assert_error("kn_loader_new", "[10,3]");
    kn_clear_error();
    cr_assert_null(kn_loader_new(kn_scalar(1, KN_F32), NULL, 2, true, false, 0));
    assert_error("kn_loader_new", "0-dim");
    kn_clear_error();
    cr_assert_null(kn_loader_new(NULL, y, 2, true, false, 0));
    assert_error("kn_loader_new", NULL);
    kn_clear_error();
    cr_assert(!kn_loader_next(NULL, &xb, NULL));
    assert_error("kn_loader_next", NULL);
    cr_assert_eq(kn_loader_batches(NULL), -1);
    kn_loader_reset(NULL);
    kn_loader_free(NULL);
}
