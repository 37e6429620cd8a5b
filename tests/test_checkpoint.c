/* Checkpoints: safetensors round trips, the bytes on disk, files written by
 * other tools, and corrupt or hostile files (an error, nothing changed). */
#include "helpers.h"
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static int64_t live0;
static char dir[64];

static void rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char sub[600];
        snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
        rm_tree(sub);
    }
    closedir(d);
    rmdir(path);
}

static void setup(void) {
    kn_clear_error();
    live0 = kn_live_tensors();
    kn_pool_push();
    strcpy(dir, "/tmp/kiln-ckpt-XXXXXX");
    cr_assert(mkdtemp(dir), "mkdtemp failed");
}

static void teardown(void) {
    kn_pool_pop();
    rm_tree(dir);
    cr_assert_eq(kn_live_tensors(), live0, "tensors leaked");
}

TestSuite(checkpoint, .init = setup, .fini = teardown);

/* dir/name in one of a few rotating buffers, so a test can hold several. */
static const char *P(const char *name) {
    static char bufs[4][600];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* Writes <u64 len><header><data> as a safetensors writer would (no padding). */
static void write_st(const char *path, const char *header, const void *data, size_t dlen) {
    size_t hlen = strlen(header);
    unsigned char *b = malloc(8 + hlen + dlen + 1);
    for (int k = 0; k < 8; k++) b[k] = (unsigned char)((uint64_t)hlen >> (8 * k));
    memcpy(b + 8, header, hlen);
    if (dlen) memcpy(b + 8 + hlen, data, dlen);
    write_bytes(path, b, 8 + hlen + dlen);
    free(b);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n + 1);
    cr_assert_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static int count_tmp_files(void) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) n += strstr(de->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* Bitwise equality of values in C order (NaN payloads included). */
static void assert_same_bytes(const kn_tensor *got, const kn_tensor *want) {
    cr_assert_eq(kn_dtype_of(got), kn_dtype_of(want));
    cr_assert_eq(kn_ndim(got), kn_ndim(want));
    for (int d = 0; d < kn_ndim(want); d++) cr_assert_eq(kn_shape(got)[d], kn_shape(want)[d]);
    size_t n = (size_t)kn_numel(want) * kn_dtype_size(kn_dtype_of(want));
    char *a = malloc(n + 1), *b = malloc(n + 1);
    cr_assert_eq(kn_copy_out(got, a, n), 0);
    cr_assert_eq(kn_copy_out(want, b, n), 0);
    cr_assert(memcmp(a, b, n) == 0, "values differ");
    free(a);
    free(b);
}

static void assert_error_has(const char *op, const char *what) {
    const char *e = kn_last_error();
    cr_assert(e, "no error set (expected one about '%s')", what);
    cr_assert(strstr(e, op), "error does not name %s: %s", op, e);
    cr_assert(strstr(e, what), "error lacks '%s': %s", what, e);
}

Test(checkpoint, round_trip_all_dtypes) {
    kn_tensor *ts[5] = {
        TF32(KN_SHAPE(2, 3), 1.5f, -0.0f, INFINITY, NAN, 1e-40f, -3),
        TF64(KN_SHAPE(3), 1.0 / 3, -1e300, -NAN),
        kn_from_data((const int32_t[]){INT32_MIN, -1, 0, INT32_MAX}, KN_SHAPE(2, 2), KN_I32),
        TI64(KN_SHAPE(2, 1), INT64_MIN, INT64_MAX),
        kn_from_data((const bool[]){1, 0, 1, 1, 0}, KN_SHAPE(5), KN_BOOL),
    };
    const char *names[5] = {"f32", "f64", "i32", "i64", "bool"};
    cr_assert_eq(kn_save(P("a.safetensors"), names, ts, 5), 0, "%s", kn_last_error());
    kn_tensor *back[5];
    for (int i = 0; i < 5; i++) back[i] = kn_zeros(kn_shape(ts[i]), kn_ndim(ts[i]), kn_dtype_of(ts[i]));
    cr_assert_eq(kn_load(P("a.safetensors"), names, back, 5), 0, "%s", kn_last_error());
    for (int i = 0; i < 5; i++) assert_same_bytes(back[i], ts[i]);
    /* A subset, in another order. */
    kn_tensor *x = kn_zeros(KN_SHAPE(2, 1), KN_I64);
    cr_assert_eq(kn_load(P("a.safetensors"), (const char *[]){"i64"}, &x, 1), 0);
    assert_same_bytes(x, ts[3]);
    cr_assert_null(kn_last_error());
}

Test(checkpoint, round_trip_scalar_and_empty) {
    kn_tensor *ts[4] = {kn_scalar(3.25, KN_F64), kn_zeros(KN_SHAPE(0), KN_F32),
                        kn_zeros(KN_SHAPE(3, 0, 2), KN_I32), kn_scalar(1, KN_BOOL)};
    const char *names[4] = {"s", "e1", "e3", "b"};
    cr_assert_eq(kn_save(P("s.st"), names, ts, 4), 0, "%s", kn_last_error());
    kn_tensor *back[4] = {kn_scalar(0, KN_F64), kn_zeros(KN_SHAPE(0), KN_F32),
                          kn_zeros(KN_SHAPE(3, 0, 2), KN_I32), kn_scalar(0, KN_BOOL)};
    cr_assert_eq(kn_load(P("s.st"), names, back, 4), 0, "%s", kn_last_error());
    cr_assert_eq(kn_item(back[0]), 3.25);
    cr_assert_eq(kn_item(back[3]), 1);
    for (int i = 0; i < 4; i++) assert_same_bytes(back[i], ts[i]);
    /* An empty checkpoint is valid too. */
    cr_assert_eq(kn_save(P("none.st"), NULL, NULL, 0), 0, "%s", kn_last_error());
    cr_assert_eq(kn_load(P("none.st"), NULL, NULL, 0), 0, "%s", kn_last_error());
}

Test(checkpoint, round_trip_non_contiguous) {
    kn_tensor *base = kn_reshape(kn_arange(0, 24, 1, KN_F32), KN_SHAPE(4, 6));
    kn_tensor *t = kn_transpose(base, 0, 1);        /* [6,4] */
    kn_tensor *s = kn_slice(base, 1, 1, 6, 2);      /* [4,3], columns 1, 3, 5 */
    cr_assert(!kn_is_contiguous(t) && !kn_is_contiguous(s));
    const char *names[2] = {"t", "s"};
    cr_assert_eq(kn_save(P("nc.st"), names, (kn_tensor *[]){t, s}, 2), 0, "%s", kn_last_error());

    /* Into contiguous tensors: the file holds C order. */
    kn_tensor *tc = kn_zeros(KN_SHAPE(6, 4), KN_F32), *sc = kn_zeros(KN_SHAPE(4, 3), KN_F32);
    cr_assert_eq(kn_load(P("nc.st"), names, (kn_tensor *[]){tc, sc}, 2), 0, "%s", kn_last_error());
    assert_same_bytes(tc, kn_contiguous(t));
    assert_same_bytes(sc, kn_contiguous(s));
    for (int64_t i = 0; i < 12; i++) cr_assert_eq(at(sc, i), (double)((i / 3) * 6 + 1 + 2 * (i % 3)));

    /* Into views of other tensors: only the viewed elements change. */
    kn_tensor *big1 = kn_zeros(KN_SHAPE(4, 6), KN_F32), *big2 = kn_full(KN_SHAPE(4, 6), -1, KN_F32);
    kn_tensor *d1 = kn_transpose(big1, 0, 1), *d2 = kn_slice(big2, 1, 1, 6, 2);
    cr_assert_eq(kn_load(P("nc.st"), names, (kn_tensor *[]){d1, d2}, 2), 0, "%s", kn_last_error());
    assert_same_bytes(big1, base);
    for (int64_t i = 0; i < 24; i++) cr_assert_eq(at(big2, i), i % 2 ? (double)i : -1.0, "element %lld", (long long)i);

    /* An expanded view cannot hold distinct values. */
    kn_tensor *row = kn_zeros(KN_SHAPE(1, 4), KN_F32);
    kn_tensor *ex = kn_expand(row, KN_SHAPE(6, 4));
    cr_assert_eq(kn_load(P("nc.st"), (const char *[]){"t"}, &ex, 1), -1);
    assert_error_has("kn_load", "expanded view");
    for (int i = 0; i < 4; i++) cr_assert_eq(at(row, i), 0);
}

Test(checkpoint, header_bytes) {
    kn_tensor *a = TF32(KN_SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    kn_tensor *b = TI64(KN_SHAPE(2), -5, 1LL << 40);
    kn_tensor *c = kn_from_data((const bool[]){1, 0, 1}, KN_SHAPE(3), KN_BOOL);
    kn_tensor *e = kn_zeros(KN_SHAPE(0), KN_I32);
    kn_tensor *s = kn_scalar(2.5, KN_F64);
    cr_assert_eq(kn_save(P("h.st"), (const char *[]){"a", "b", "c", "e", "s"},
                         (kn_tensor *[]){a, b, c, e, s}, 5), 0, "%s", kn_last_error());
    size_t n;
    unsigned char *f = read_bytes(P("h.st"), &n);
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--) hlen = hlen << 8 | f[k];
    cr_assert_eq(hlen % 8, 0, "header length %llu is not a multiple of 8", (unsigned long long)hlen);
    /* Widest dtypes first, so every tensor is aligned to its element size. */
    const char *want =
        "{\"__metadata__\":{\"format\":\"kiln\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[24,48]},"
        "\"b\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},"
        "\"c\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[48,51]},"
        "\"e\":{\"dtype\":\"I32\",\"shape\":[0],\"data_offsets\":[48,48]},"
        "\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[16,24]}}";
    size_t wl = strlen(want);
    cr_assert_geq(hlen, wl);
    cr_assert(memcmp(f + 8, want, wl) == 0, "header is %.*s", (int)hlen, (const char *)f + 8);
    cr_assert_lt(hlen - wl, 8, "more padding than needed");
    for (size_t k = wl; k < hlen; k++) cr_assert_eq(f[8 + k], ' ', "padding is not spaces");
    cr_assert_eq(n, 8 + hlen + 51);
    const unsigned char *data = f + 8 + hlen;
    cr_assert_eq((8 + hlen) % 8, 0);
    cr_assert(memcmp(data, kn_data(b), 16) == 0);
    cr_assert(memcmp(data + 16, kn_data(s), 8) == 0);
    cr_assert(memcmp(data + 24, kn_data(a), 24) == 0);
    cr_assert(memcmp(data + 48, "\1\0\1", 3) == 0);
    free(f);
}

/* The bytes Python's safetensors 0.8 writes for
 * save_file({"weight": f32 [[1,2],[3,4]], "bias": f64 [0.5,-1.5,2], "mask": [True,False,True],
 *            "idx": i64 [7,-8], "h": f16 [1,2]}, metadata={"format": "np"}). */
static const char py_header[] =
    "{\"__metadata__\":{\"format\":\"np\"},\"idx\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},"
    "\"bias\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[16,40]},"
    "\"weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[40,56]},"
    "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[56,60]},"
    "\"mask\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[60,63]}}      ";
static const unsigned char py_data[63] = {
    0x07, 0, 0, 0, 0, 0, 0, 0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0, 0, 0, 0, 0, 0, 0xe0, 0x3f, 0, 0, 0, 0, 0, 0, 0xf8, 0xbf, 0, 0, 0, 0, 0, 0, 0, 0x40,
    0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0, 0, 0x40, 0x40, 0, 0, 0x80, 0x40,
    0x00, 0x3c, 0x00, 0x40, 0x01, 0x00, 0x01,
};

Test(checkpoint, file_from_python) {
    cr_assert_eq(strlen(py_header) % 8, 0);
    write_st(P("py.st"), py_header, py_data, sizeof py_data);
    const char *names[4] = {"weight", "bias", "mask", "idx"};
    kn_tensor *d[4] = {kn_zeros(KN_SHAPE(2, 2), KN_F32), kn_zeros(KN_SHAPE(3), KN_F64),
                       kn_zeros(KN_SHAPE(3), KN_BOOL), kn_zeros(KN_SHAPE(2), KN_I64)};
    cr_assert_eq(kn_load(P("py.st"), names, d, 4), 0, "%s", kn_last_error());
    assert_same_bytes(d[0], TF32(KN_SHAPE(2, 2), 1, 2, 3, 4));
    assert_same_bytes(d[1], TF64(KN_SHAPE(3), 0.5, -1.5, 2));
    assert_same_bytes(d[2], kn_from_data((const bool[]){1, 0, 1}, KN_SHAPE(3), KN_BOOL));
    assert_same_bytes(d[3], TI64(KN_SHAPE(2), 7, -8));
    char **list;
    int n;
    cr_assert_eq(kn_checkpoint_entries(P("py.st"), &list, &n), 0, "%s", kn_last_error());
    cr_assert_eq(n, 5);
    const char *order[5] = {"idx", "bias", "weight", "h", "mask"};
    for (int i = 0; i < n; i++) {
        cr_assert_str_eq(list[i], order[i]);
        free(list[i]);
    }
    free(list);
    /* The f16 entry may be present, just not loaded. */
    kn_tensor *h = kn_zeros(KN_SHAPE(2), KN_F32);
    cr_assert_eq(kn_load(P("py.st"), (const char *[]){"h"}, &h, 1), -1);
    assert_error_has("kn_load", "F16, which Kiln does not support");
}

Test(checkpoint, lenient_where_the_format_allows) {
    /* Pretty-printed JSON, unknown fields, metadata of any JSON type, a gap
     * in the data, and a bool byte that is not 0 or 1 (read as true). */
    const char *h =
        "{\n  \"x\" : { \"shape\" : [ 2 ], \"extra\": {\"k\": [1, 2.5e-3, null]},\n"
        "           \"dtype\" : \"I32\", \"data_offsets\" : [ 4, 12 ] },\n"
        "  \"__metadata__\": {\"a\": \"\\u00e9\", \"b\": [true, false, {}], \"c\": -0.5},\n"
        "  \"m\": {\"dtype\": \"BOOL\", \"shape\": [2], \"data_offsets\": [12, 14]}\n}\t\r\n";
    unsigned char data[14] = {0xAA, 0xAA, 0xAA, 0xAA, 5, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff, 2, 0};
    write_st(P("l.st"), h, data, sizeof data);
    kn_tensor *x = kn_zeros(KN_SHAPE(2), KN_I32), *m = kn_zeros(KN_SHAPE(2), KN_BOOL);
    cr_assert_eq(kn_load(P("l.st"), (const char *[]){"x", "m"}, (kn_tensor *[]){x, m}, 2), 0,
                 "%s", kn_last_error());
    cr_assert_eq(at(x, 0), 5);
    cr_assert_eq(at(x, 1), -2);
    cr_assert_eq(((unsigned char *)kn_data(m))[0], 1);
    cr_assert_eq(((unsigned char *)kn_data(m))[1], 0);
}

/* ---- corrupt files: every one fails naming kn_load, changing nothing ---- */

/* A valid file is {"a": f32 [2] at [0,8], "b": i64 [3] at [8,32]} with 32 data bytes. */
#define A_OK "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"
#define B_OK "\"b\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[8,32]}"
typedef struct { const char *header; const char *error; bool file_ok; } bad_case;
static const bad_case bad_cases[] = {
    {"hello", "not a JSON object", false},
    {"", "not a JSON object", false},
    {"[1,2]", "not a JSON object", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_of", "unterminated string", false},
    {"{" A_OK "," B_OK, "expected '}'", false},
    {"{" A_OK "," B_OK "}x", "only spaces after", false},
    {"{" A_OK ";" B_OK "}", "expected '}'", false},
    {"{" A_OK "," B_OK ",}", "expected a string", false},
    {"{\"a\" " A_OK "}", "expected ':'", false},
    {"{\"a\":[1]," B_OK "}", "entry 'a' is not an object", false},
    {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}," B_OK "}", "entry 'a' has no 'dtype'", false},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}," B_OK "}", "entry 'a' has no 'shape'", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}," B_OK "}", "entry 'a' has no 'data_offsets'", false},
    {"{\"a\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}," B_OK "}", "'dtype' of 'a' is not a string", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}," B_OK "}", "'shape' of 'a' is not an array", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}," B_OK "}", "'shape' of 'a' is not an integer", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":8}," B_OK "}", "'data_offsets' of 'a' is not an array", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}," B_OK "}", "is not [begin, end]", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}," B_OK "}", "is not [begin, end]", false},
    {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}," B_OK "}", "has 'dtype' twice", false},
    {"{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}," B_OK "}", "unknown dtype 'F33'", false},
    {"{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}," B_OK "}", "unknown dtype 'f32'", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}," B_OK "}", "'shape' of 'a' is negative", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}," B_OK "}", "not an integer", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2e0],\"data_offsets\":[0,8]}," B_OK "}", "not an integer", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}," B_OK "}", "leading zero", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,8]}," B_OK "}", "not an integer", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-1,8]}," B_OK "}", "'data_offsets' of 'a' is negative", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}," B_OK "}", "holds 8 bytes but its F32 shape needs 12", false},
    {"{" A_OK ",\"b\":{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[8,40]}}", "runs past the 32-byte data section", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}," B_OK "}", "ends before it begins", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}," B_OK "}", "overlap", false},
    {"{" B_OK ",\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}", "overlap", false},
    {"{" A_OK "," B_OK "," A_OK "}", "duplicate entry 'a'", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]}," B_OK "}", "overflow", false},
    {"{\"a\":{\"dtype\":\"I64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}," B_OK "}", "overflow", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}," B_OK "}", "too large", false},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551624]}," B_OK "}", "too large", false},
    {"{\"a\\q\":{}}", "valid escape", false},
    {"{\"a\\u12\":{}}", "valid escape", false},
    {"{\"a\\ud800\":{}}", "low surrogate", false},
    {"{\"a\\udc00x\":{}}", "lone low surrogate", false},
    {"{\"a\\u0000\":{}}", "\\u0000", false},
    {"{\"a\x01\":{}}", "control character", false},
    {"{\"a\xff\":{}}", "not valid UTF-8", false},
    {"{\"a\xc0\x80\":{}}", "not valid UTF-8", false},
    {"{\"__metadata__\":\"x\"," A_OK "," B_OK "}", "'__metadata__' is not an object", false},
    {"{\"__metadata__\":{},\"__metadata__\":{}," A_OK "," B_OK "}", "'__metadata__' twice", false},
    {"{\"__metadata__\":{\"k\":tru}," A_OK "," B_OK "}", "expected a value", false},
    {"{\"__metadata__\":{\"k\":1.}," A_OK "," B_OK "}", "expected a digit", false},
    /* Requests that do not fit a valid file; "a" fits, so these show all or nothing. */
    {"{" A_OK ",\"b\":{\"dtype\":\"I32\",\"shape\":[6],\"data_offsets\":[8,32]}}", "entry 'b' is I32 [6] but its destination is I64 [3]", true},
    {"{" A_OK ",\"b\":{\"dtype\":\"I64\",\"shape\":[1,3],\"data_offsets\":[8,32]}}", "entry 'b' is I64 [1,3] but its destination is I64 [3]", true},
    {"{" A_OK ",\"b\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[8,16]}}", "entry 'b' is I64 [] but its destination is I64 [3]", true},
    {"{" A_OK ",\"c\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[8,32]}}", "no entry 'b'", true},
    {"{" A_OK ",\"b\":{\"dtype\":\"U64\",\"shape\":[3],\"data_offsets\":[8,32]}}", "U64, which Kiln does not support", true},
};

static kn_tensor *dest_a, *dest_b;

static void make_dests(void) {
    dest_a = TF32(KN_SHAPE(2), 7, 8);
    dest_b = TI64(KN_SHAPE(3), -1, -2, -3);
}

static void assert_dests_unchanged(const char *what) {
    cr_assert(at(dest_a, 0) == 7 && at(dest_a, 1) == 8, "'a' changed (%s)", what);
    cr_assert(at(dest_b, 0) == -1 && at(dest_b, 1) == -2 && at(dest_b, 2) == -3, "'b' changed (%s)", what);
}

/* Loads "a" and "b" from path, expecting failure with `what` in the message. */
static void expect_load_fails(const char *path, const char *what) {
    kn_clear_error();
    cr_assert_eq(kn_load(path, (const char *[]){"a", "b"}, (kn_tensor *[]){dest_a, dest_b}, 2), -1,
                 "loaded despite: %s", what);
    assert_error_has("kn_load", what);
    cr_assert(strstr(kn_last_error(), path), "error does not name the file: %s", kn_last_error());
    assert_dests_unchanged(what);
}

Test(checkpoint, corrupt_headers) {
    unsigned char data[32];
    for (int k = 0; k < 32; k++) data[k] = (unsigned char)(0x40 + k);
    make_dests();
    /* The two valid entries load, so the failures below are the corruption's. */
    write_st(P("ok.st"), "{" A_OK "," B_OK "}", data, 32);
    kn_tensor *a = kn_zeros(KN_SHAPE(2), KN_F32), *b = kn_zeros(KN_SHAPE(3), KN_I64);
    cr_assert_eq(kn_load(P("ok.st"), (const char *[]){"a", "b"}, (kn_tensor *[]){a, b}, 2), 0, "%s", kn_last_error());

    int n = (int)(sizeof bad_cases / sizeof bad_cases[0]);
    for (int i = 0; i < n; i++) {
        const bad_case *c = &bad_cases[i];
        size_t hlen = strlen(c->header);
        unsigned char *file = malloc(8 + hlen + 32);
        for (int k = 0; k < 8; k++) file[k] = (unsigned char)((uint64_t)hlen >> (8 * k));
        memcpy(file + 8, c->header, hlen);
        memcpy(file + 8 + hlen, data, 32);
        write_bytes(P("bad.st"), file, 8 + hlen + 32);
        free(file);
        expect_load_fails(P("bad.st"), c->error);
        char **list;
        int cnt;
        kn_clear_error();
        int rc = kn_checkpoint_entries(P("bad.st"), &list, &cnt);
        if (c->file_ok) {
            cr_assert_eq(rc, 0, "case %d: %s", i, kn_last_error());
            for (int k = 0; k < cnt; k++) free(list[k]);
            free(list);
        } else {
            cr_assert_eq(rc, -1, "case %d: entries listed from a corrupt file", i);
            cr_assert_null(list);
            cr_assert_eq(cnt, 0);
            assert_error_has("kn_checkpoint_entries", c->error);
        }
    }
}

Test(checkpoint, deep_nesting) {
    make_dests();
    char h[4200];
    int k = sprintf(h, "{\"__metadata__\":{\"x\":");
    for (int i = 0; i < 2000; i++) h[k++] = '[';
    for (int i = 0; i < 2000; i++) h[k++] = ']';
    strcpy(h + k, "}}");
    write_st(P("deep.st"), h, NULL, 0);
    expect_load_fails(P("deep.st"), "nests more than");
}

Test(checkpoint, corrupt_files) {
    make_dests();
    unsigned char buf[64] = {0};
    write_bytes(P("empty.st"), buf, 0);
    expect_load_fails(P("empty.st"), "too short");
    write_bytes(P("short.st"), "\x10\0\0\0\0", 5);
    expect_load_fails(P("short.st"), "too short");
    /* An 8-byte length, then nothing: an empty header. */
    write_bytes(P("zero.st"), buf, 8);
    expect_load_fails(P("zero.st"), "not a JSON object");
    /* Header length past the end of the file, or absurdly large. */
    uint64_t lens[3] = {57, 1ULL << 40, UINT64_MAX};
    const char *errs[3] = {"runs past the end", "over the", "over the"};
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 8; k++) buf[k] = (unsigned char)(lens[i] >> (8 * k));
        memcpy(buf + 8, "{}", 2);
        write_bytes(P("len.st"), buf, 64);
        expect_load_fails(P("len.st"), errs[i]);
    }
    /* NUL padding instead of spaces. */
    static const char nul_pad[] = "{" A_OK "," B_OK "}\0\0\0";
    write_st(P("nul.st"), "", NULL, 0);
    size_t hl = sizeof nul_pad - 1;
    unsigned char *f0 = malloc(8 + hl + 32);
    for (int k = 0; k < 8; k++) f0[k] = (unsigned char)((uint64_t)hl >> (8 * k));
    memcpy(f0 + 8, nul_pad, hl);
    memset(f0 + 8 + hl, 0, 32);
    write_bytes(P("nul.st"), f0, 8 + hl + 32);
    free(f0);
    expect_load_fails(P("nul.st"), "only spaces after");
    expect_load_fails(P("missing.st"), "cannot open");
    expect_load_fails(dir, "not a regular file");

    /* A checkpoint cut short, as by a crash without the atomic rename. */
    cr_assert_eq(kn_save(P("full.st"), (const char *[]){"a", "b"},
                         (kn_tensor *[]){kn_zeros(KN_SHAPE(2), KN_F32), kn_zeros(KN_SHAPE(3), KN_I64)}, 2), 0);
    size_t n;
    unsigned char *f = read_bytes(P("full.st"), &n);
    write_bytes(P("cut.st"), f, n - 1);
    expect_load_fails(P("cut.st"), "runs past");
    write_bytes(P("cut2.st"), f, 20);
    expect_load_fails(P("cut2.st"), "runs past the end");
    free(f);
}

/* ---- saving ---- */

Test(checkpoint, bad_save_arguments) {
    kn_tensor *x = kn_zeros(KN_SHAPE(2), KN_F32);
    struct { const char *names[2]; kn_tensor *ts[2]; const char *error; } cases[] = {
        {{"x", "x"}, {x, x}, "duplicate name 'x'"},
        {{"x", NULL}, {x, x}, "name 1 is NULL"},
        {{"x", "y"}, {x, NULL}, "tensor 'y' is NULL"},
        {{"x", "__metadata__"}, {x, x}, "reserved"},
        {{"x", "bad\xff"}, {x, x}, "not valid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kn_clear_error();
        cr_assert_eq(kn_save(P("x.st"), cases[i].names, cases[i].ts, 2), -1);
        assert_error_has("kn_save", cases[i].error);
        cr_assert_eq(access(P("x.st"), F_OK), -1, "a file was created");
    }
    kn_clear_error();
    cr_assert_eq(kn_save(NULL, NULL, NULL, 0), -1);
    assert_error_has("kn_save", "NULL");
    cr_assert_eq(count_tmp_files(), 0);
}

static void save_old(const char *path) {
    kn_tensor *old = TF32(KN_SHAPE(2), 7, 8);
    cr_assert_eq(kn_save(path, (const char *[]){"a"}, &old, 1), 0, "%s", kn_last_error());
}

static void assert_old(const char *path) {
    kn_tensor *a = kn_zeros(KN_SHAPE(2), KN_F32);
    cr_assert_eq(kn_load(path, (const char *[]){"a"}, &a, 1), 0, "old file damaged: %s", kn_last_error());
    cr_assert(at(a, 0) == 7 && at(a, 1) == 8, "old file changed");
}

Test(checkpoint, failed_save_leaves_old_file) {
    kn_tensor *x = kn_ones(KN_SHAPE(2), KN_F32);
    /* Into a directory that does not exist. */
    cr_assert_eq(kn_save(P("nodir/x.st"), (const char *[]){"a"}, &x, 1), -1);
    assert_error_has("kn_save", "nodir/x.st");
    cr_assert_eq(access(P("nodir"), F_OK), -1);

    /* Over an existing checkpoint, failing on the arguments. */
    save_old(P("old.st"));
    kn_clear_error();
    cr_assert_eq(kn_save(P("old.st"), (const char *[]){"a", "a"}, (kn_tensor *[]){x, x}, 2), -1);
    assert_old(P("old.st"));

    /* The rename fails (the target is a directory): the written temp file goes. */
    cr_assert_eq(mkdir(P("isdir.st"), 0700), 0);
    kn_clear_error();
    cr_assert_eq(kn_save(P("isdir.st"), (const char *[]){"a"}, &x, 1), -1);
    assert_error_has("kn_save", "rename");
    struct stat st;
    cr_assert(stat(P("isdir.st"), &st) == 0 && S_ISDIR(st.st_mode));
    cr_assert_eq(count_tmp_files(), 0, "a temporary file was left behind");

    /* A write fails halfway (file size limit): old file intact, no temp file. */
    kn_tensor *big = kn_zeros(KN_SHAPE(1 << 20), KN_F32);
    struct rlimit old_lim, lim;
    getrlimit(RLIMIT_FSIZE, &old_lim);
    lim = old_lim;
    lim.rlim_cur = 64 << 10;
    signal(SIGXFSZ, SIG_IGN);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    kn_clear_error();
    int rc = kn_save(P("old.st"), (const char *[]){"a"}, &big, 1);
    setrlimit(RLIMIT_FSIZE, &old_lim);
    cr_assert_eq(rc, -1);
    assert_error_has("kn_save", "write");
    assert_old(P("old.st"));
    cr_assert_eq(count_tmp_files(), 0, "a temporary file was left behind");

    /* And a save that succeeds replaces it. */
    kn_clear_error();
    cr_assert_eq(kn_save(P("old.st"), (const char *[]){"a"}, &x, 1), 0, "%s", kn_last_error());
    kn_tensor *a = kn_zeros(KN_SHAPE(2), KN_F32);
    cr_assert_eq(kn_load(P("old.st"), (const char *[]){"a"}, &a, 1), 0);
    cr_assert_eq(at(a, 1), 1);
    cr_assert_eq(count_tmp_files(), 0);
}

/* ---- names ---- */

Test(checkpoint, names_escaped) {
    const char *names[8] = {
        "plain", "with \"quotes\"", "back\\slash", "new\nline\ttab", "ctl\x01\x1f\x7f",
        "ñandú/日本", "emoji 😀", "",
    };
    kn_tensor *ts[8];
    for (int i = 0; i < 8; i++) ts[i] = kn_full(KN_SHAPE(1), i, KN_I32);
    cr_assert_eq(kn_save(P("n.st"), names, ts, 8), 0, "%s", kn_last_error());
    char **list;
    int n;
    cr_assert_eq(kn_checkpoint_entries(P("n.st"), &list, &n), 0, "%s", kn_last_error());
    cr_assert_eq(n, 8);
    for (int i = 0; i < 8; i++) {
        cr_assert_str_eq(list[i], names[i]);
        free(list[i]);
    }
    free(list);
    kn_tensor *back[8];
    for (int i = 7; i >= 0; i--) back[i] = kn_zeros(KN_SHAPE(1), KN_I32);
    cr_assert_eq(kn_load(P("n.st"), names, back, 8), 0, "%s", kn_last_error());
    for (int i = 0; i < 8; i++) cr_assert_eq(at(back[i], 0), i);

    /* The same names as another writer may escape them, \u escapes included. */
    const char *h =
        "{\"with \\\"quotes\\\"\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"\\u00f1and\\u00FA\\/\\u65e5\\u672c\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[4,8]},"
        "\"emoji \\ud83d\\ude00\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[8,12]},"
        "\"ctl\\u0001\\u001F\\u007f\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[12,16]}}";
    const int32_t vals[4] = {10, 11, 12, 13};
    write_st(P("u.st"), h, vals, sizeof vals);
    const char *want[4] = {names[1], names[5], names[6], names[4]};
    kn_tensor *d[4];
    for (int i = 0; i < 4; i++) d[i] = kn_zeros(KN_SHAPE(1), KN_I32);
    cr_assert_eq(kn_load(P("u.st"), want, d, 4), 0, "%s", kn_last_error());
    for (int i = 0; i < 4; i++) cr_assert_eq(at(d[i], 0), 10 + i);
}

Test(checkpoint, entries_errors) {
    char **list = (char **)1;
    int n = 5;
    cr_assert_eq(kn_checkpoint_entries(P("missing.st"), &list, &n), -1);
    cr_assert_null(list);
    cr_assert_eq(n, 0);
    assert_error_has("kn_checkpoint_entries", "cannot open");
    kn_clear_error();
    cr_assert_eq(kn_checkpoint_entries(P("x"), NULL, &n), -1);
    assert_error_has("kn_checkpoint_entries", "NULL");
    kn_clear_error();
    kn_tensor *x = kn_zeros(KN_SHAPE(1), KN_F32);
    cr_assert_eq(kn_load(P("missing.st"), (const char *[]){NULL}, &x, 1), -1);
    assert_error_has("kn_load", "cannot open");
}
