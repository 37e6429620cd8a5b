/* Data loading: IDX files (MNIST, Fashion-MNIST) through zlib, normalization,
 * and a mini-batch loader that shuffles with Philox. */
#include "../core/internal.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* ---- IDX files ---- */

/* A header claiming more data than this is corrupt, not a data set. */
#define IDX_MAX_BYTES ((int64_t)1 << 36)

/* An IDX file's header and its payload, still big-endian. */
typedef struct {
    int type;                    /* IDX element type code */
    size_t esize;                /* bytes per element */
    int ndim;
    int64_t shape[KN_MAX_DIMS];
    int64_t numel;
    unsigned char *data;         /* numel * esize bytes, malloc'd; NULL if empty */
} idx_file;

static size_t idx_esize(int type) {
    switch (type) {
    case 0x08: case 0x09: return 1;
    case 0x0B: return 2;
    case 0x0C: case 0x0D: return 4;
    case 0x0E: return 8;
    default: return 0;
    }
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads up to n bytes; the count read, or -1 on a read or zlib error. */
static int64_t gz_read(gzFile f, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        size_t want = n - got < ((size_t)1 << 30) ? n - got : (size_t)1 << 30;
        int r = gzread(f, (char *)buf + got, (unsigned)want);
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (int64_t)got;
}

/* zlib's message for f's error, without the "path: " it starts with. */
static const char *gz_msg(gzFile f, const char *path) {
    int err;
    const char *m = gzerror(f, &err);
    if (err == Z_ERRNO) return strerror(errno);
    size_t n = strlen(path);
    return strncmp(m, path, n) == 0 && m[n] == ':' && m[n + 1] == ' ' ? m + n + 2 : m;
}

/* The payload, into a buffer that grows as data arrives: a header claiming far
 * more than the file holds fails at its real end, not in a huge allocation. */
static bool read_payload(gzFile f, const char *op, const char *path, idx_file *idx) {
    size_t need = (size_t)idx->numel * idx->esize, cap = 0, got = 0;
    unsigned char *buf = NULL;
    while (got < need) {
        if (got == cap) {
            size_t ncap = cap ? cap * 2 : (size_t)1 << 20;
            if (ncap > need) ncap = need;
            unsigned char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                kn__error("%s: '%s': out of memory reading %zu bytes", op, path, need);
                return false;
            }
            buf = nb;
            cap = ncap;
        }
        int64_t r = gz_read(f, buf + got, cap - got);
        if (r <= 0) {
            if (r < 0) kn__error("%s: '%s': read error in the data: %s", op, path, gz_msg(f, path));
            else kn__error("%s: '%s': truncated: the header promises %zu data bytes, "
                           "the file has %zu", op, path, need, got);
            free(buf);
            return false;
        }
        got += (size_t)r;
    }
    /* A read past the data makes zlib reach the gzip trailer and check its CRC. */
    unsigned char extra;
    int err = Z_OK;
    if (gzread(f, &extra, 1) < 0 || (gzerror(f, &err), err != Z_OK)) {
        kn__error("%s: '%s': corrupt or truncated gzip stream: %s", op, path, gz_msg(f, path));
        free(buf);
        return false;
    }
    idx->data = buf;
    return true;
}

/* Reads the whole file; errors name op and path. gzopen reads plain files
 * as they are and inflates those that start with the gzip magic. */
static bool idx_read(const char *op, const char *path, idx_file *idx) {
    memset(idx, 0, sizeof *idx);
    errno = 0;
    gzFile f = gzopen(path, "rb");
    if (!f) {
        kn__error("%s: cannot open '%s': %s", op, path, errno ? strerror(errno) : "out of memory");
        return false;
    }
    gzbuffer(f, 1 << 18);
    bool ok = false;
    unsigned char h[4 + 4 * KN_MAX_DIMS];
    int64_t r = gz_read(f, h, 4);
    if (r < 0) {
        kn__error("%s: '%s': read error: %s", op, path, gz_msg(f, path));
        goto out;
    }
    if (r < 4) {
        kn__error("%s: '%s': truncated: %lld bytes, too short for an IDX header",
                  op, path, (long long)r);
        goto out;
    }
    if (h[0] || h[1]) {
        kn__error("%s: '%s': bad magic %02x %02x %02x %02x (an IDX file starts with 00 00)",
                  op, path, h[0], h[1], h[2], h[3]);
        goto out;
    }
    idx->type = h[2];
    idx->esize = idx_esize(h[2]);
    idx->ndim = h[3];
    if (!idx->esize) {
        kn__error("%s: '%s': unknown IDX element type 0x%02x "
                  "(expected 0x08, 0x09, 0x0B, 0x0C, 0x0D or 0x0E)", op, path, h[2]);
        goto out;
    }
    if (idx->ndim < 1 || idx->ndim > KN_MAX_DIMS) {
        kn__error("%s: '%s': %d dims in the header (expected 1..%d)",
                  op, path, idx->ndim, KN_MAX_DIMS);
        goto out;
    }
    size_t dbytes = 4 * (size_t)idx->ndim;
    if (gz_read(f, h + 4, dbytes) != (int64_t)dbytes) {
        kn__error("%s: '%s': truncated in the header's %d dims", op, path, idx->ndim);
        goto out;
    }
    /* Each dim is below 2^32 and the running product stays below 2^36, so
     * the check itself cannot overflow. */
    int64_t n = 1, max = IDX_MAX_BYTES / (int64_t)idx->esize;
    bool huge = false;
    for (int i = 0; i < idx->ndim; i++) {
        idx->shape[i] = be32(h + 4 + 4 * i);
        if (idx->shape[i] && n > max / idx->shape[i]) huge = true;
        else n *= idx->shape[i];
    }
    if (huge) {
        char b[KN_SHAPE_BUF];
        kn__error("%s: '%s': dims %s hold more than 2^36 bytes (a corrupt header?)",
                  op, path, kn__shape_str(idx->shape, idx->ndim, b));
        goto out;
    }
    idx->numel = n;
    ok = read_payload(f, op, path, idx);
out:
    gzclose(f);
    return ok;
}

/* Payload elements [start, start + n) as doubles (exact for every IDX type). */
static void decode(const idx_file *idx, int64_t start, int64_t n, double *out) {
    const unsigned char *p = idx->data + (size_t)start * idx->esize;
    switch (idx->type) {
    case 0x08: for (int64_t i = 0; i < n; i++) out[i] = p[i]; break;
    case 0x09: for (int64_t i = 0; i < n; i++) out[i] = (int8_t)p[i]; break;
    case 0x0B:
        for (int64_t i = 0; i < n; i++, p += 2) out[i] = (int16_t)(uint16_t)(p[0] << 8 | p[1]);
        break;
    case 0x0C: for (int64_t i = 0; i < n; i++, p += 4) out[i] = (int32_t)be32(p); break;
    case 0x0D:
        for (int64_t i = 0; i < n; i++, p += 4) {
            uint32_t u = be32(p);
            float v;
            memcpy(&v, &u, 4);
            out[i] = v;
        }
        break;
    default: /* 0x0E */
        for (int64_t i = 0; i < n; i++, p += 8) {
            uint64_t u = (uint64_t)be32(p) << 32 | be32(p + 4);
            double v;
            memcpy(&v, &u, 8);
            out[i] = v;
        }
        break;
    }
}

/* Float to integer without C's undefined cases: truncate, saturate, NaN -> 0.
 * (double)hi may round up to hi + 1 (INT64_MAX), hence >=. */
static int64_t to_int(double v, int64_t lo, int64_t hi) {
    if (v != v) return 0;
    if (v < (double)lo) return lo;
    if (v >= (double)hi) return hi;
    return (int64_t)v;
}

static void encode(char *dst, kn_dtype dt, const double *in, int64_t n) {
    switch (dt) {
    case KN_F32: for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = (float)in[i]; break;
    case KN_F64: memcpy(dst, in, (size_t)n * sizeof *in); break;
    case KN_I32:
        for (int64_t i = 0; i < n; i++)
            ((int32_t *)dst)[i] = (int32_t)to_int(in[i], INT32_MIN, INT32_MAX);
        break;
    case KN_I64:
        for (int64_t i = 0; i < n; i++) ((int64_t *)dst)[i] = to_int(in[i], INT64_MIN, INT64_MAX);
        break;
    default:
        for (int64_t i = 0; i < n; i++) ((uint8_t *)dst)[i] = in[i] != 0;
        break;
    }
}

kn_tensor *kn_load_idx(const char *path, kn_dtype dt) {
    KN_CHECK("kn_load_idx", path);
    if ((unsigned)dt >= KN_DTYPE_COUNT)
        return kn__error("kn_load_idx: invalid dtype %d", (int)dt);
    idx_file idx;
    if (!idx_read("kn_load_idx", path, &idx)) return NULL;
    kn_tensor *t = kn__alloc(idx.shape, idx.ndim, dt);
    if (t) {
        /* Through a small double buffer: each pass stays in cache and vectorizes. */
        enum { BLOCK = 4096 };
        double buf[BLOCK];
        size_t sz = kn_dtype_size(dt);
        for (int64_t i = 0; i < idx.numel; i += BLOCK) {
            int64_t n = idx.numel - i < BLOCK ? idx.numel - i : BLOCK;
            decode(&idx, i, n, buf);
            encode(kn__ptr(t) + (size_t)i * sz, dt, buf, n);
        }
    }
    free(idx.data);
    return t;
}

/* ---- Fashion-MNIST / MNIST ---- */

/* dir/stem.gz, else dir/stem, into out; false with an install hint if neither exists. */
static bool find_file(const char *dir, const char *stem, char *out, size_t cap) {
    const char *ext[2] = {".gz", ""};
    for (int k = 0; k < 2; k++) {
        if (snprintf(out, cap, "%s/%s%s", dir, stem, ext[k]) >= (int)cap) {
            kn__error("kn_fashion_mnist: directory name too long: '%s'", dir);
            return false;
        }
        if (access(out, F_OK) == 0) return true;
    }
    kn__error("kn_fashion_mnist: data set not found: no %s/%s(.gz). Install it with "
              "`sudo apt-get install dataset-fashion-mnist` (files go to %s), "
              "or pass the directory holding the IDX files", dir, stem, KN_FASHION_MNIST_DIR);
    return false;
}

int kn_fashion_mnist(const char *dir, bool train, kn_tensor **images, kn_tensor **labels) {
    if (!images || !labels) return kn__null_arg("kn_fashion_mnist"), -1;
    *images = *labels = NULL;
    if (!dir) dir = KN_FASHION_MNIST_DIR;
    const char *op = "kn_fashion_mnist";
    char ipath[4096], lpath[4096];
    const char *set = train ? "train" : "t10k";
    char istem[64], lstem[64];
    snprintf(istem, sizeof istem, "%s-images-idx3-ubyte", set);
    snprintf(lstem, sizeof lstem, "%s-labels-idx1-ubyte", set);
    if (!find_file(dir, istem, ipath, sizeof ipath) || !find_file(dir, lstem, lpath, sizeof lpath))
        return -1;

    idx_file im, lb = {0};
    int rc = -1;
    if (!idx_read(op, ipath, &im)) return -1;
    if (!idx_read(op, lpath, &lb)) goto out;
    if (im.type != 0x08 || im.ndim != 3) {
        kn__error("%s: '%s': expected u8 images [N, rows, cols] (type 0x08, 3 dims), "
                  "got type 0x%02x with %d dims", op, ipath, im.type, im.ndim);
        goto out;
    }
    if (lb.type != 0x08 || lb.ndim != 1) {
        kn__error("%s: '%s': expected u8 labels [N] (type 0x08, 1 dim), "
                  "got type 0x%02x with %d dims", op, lpath, lb.type, lb.ndim);
        goto out;
    }
    if (im.shape[0] != lb.shape[0]) {
        kn__error("%s: %lld images in '%s' but %lld labels in '%s'", op,
                  (long long)im.shape[0], ipath, (long long)lb.shape[0], lpath);
        goto out;
    }
    int64_t n = im.shape[0], pix = im.shape[1] * im.shape[2];
    kn_tensor *x = kn__alloc(KN_SHAPE(n, pix), KN_F32);
    kn_tensor *y = kn__alloc(KN_SHAPE(n), KN_I64);
    if (!x || !y) {
        kn_release(x);
        kn_release(y);
        goto out;
    }
    /* A table gives exactly v / 255.0f (as torchvision's ToTensor) at the cost of a load. */
    float lut[256];
    for (int v = 0; v < 256; v++) lut[v] = (float)v / 255.0f;
    float *xp = kn_data(x);
    for (int64_t i = 0; i < n * pix; i++) xp[i] = lut[im.data[i]];
    int64_t *yp = kn_data(y);
    for (int64_t i = 0; i < n; i++) yp[i] = lb.data[i];
    *images = x;
    *labels = y;
    rc = 0;
out:
    free(im.data);
    free(lb.data);
    return rc;
}

/* ---- normalize ---- */

kn_tensor *kn_normalize(kn_tensor *x, double mean, double std) {
    KN_CHECK("kn_normalize", x);
    if (!isfinite(mean) || !isfinite(std) || std == 0)
        return kn__error("kn_normalize: mean %g and std %g must be finite, std nonzero", mean, std);
    kn_tensor *c = kn_sub_scalar(x, mean);
    kn_tensor *r = kn_div_scalar(c, std);
    kn_release(c);
    return r;
}

/* ---- mini-batch loader ---- */

struct kn_loader {
    kn_tensor *x, *y;        /* contiguous, retained; y may be NULL */
    int64_t n, batch, nbatches;
    int64_t epoch, step;     /* step: batches handed out this epoch */
    bool shuffle;
    uint64_t seed;
    int64_t *perm;           /* this epoch's row order; NULL without shuffle */
};

/* 64-bit draws from Philox(seed, counter). The counter's top bit keeps this
 * stream apart from kn_rand's (which counts up from 0); then 23 bits of epoch
 * (orders repeat after 2^23 epochs) and 40 bits of block index. */
typedef struct {
    uint64_t seed, counter;
    uint32_t r[4];
    int left;                /* unused 64-bit halves of r */
} draws;

static uint64_t draw64(draws *d) {
    if (d->left == 0) {
        kn__philox4x32(d->seed, d->counter++, d->r);
        d->left = 2;
    }
    int k = 2 * --d->left;
    return (uint64_t)d->r[k] << 32 | d->r[k + 1];
}

/* Uniform in [0, s), unbiased: Lemire's multiply-shift, rejecting the few
 * low products that would favour some results. */
static uint64_t draw_below(draws *d, uint64_t s) {
    unsigned __int128 m = (unsigned __int128)draw64(d) * s;
    if ((uint64_t)m < s) {
        uint64_t t = -s % s;  /* 2^64 mod s */
        while ((uint64_t)m < t) m = (unsigned __int128)draw64(d) * s;
    }
    return (uint64_t)(m >> 64);
}

/* Fisher-Yates from the identity, so an epoch's order depends only on (seed, epoch). */
static void shuffle_epoch(kn_loader *l) {
    for (int64_t i = 0; i < l->n; i++) l->perm[i] = i;
    draws d = {.seed = l->seed,
               .counter = 1ULL << 63 | ((uint64_t)l->epoch & ((1ULL << 23) - 1)) << 40};
    for (int64_t i = l->n - 1; i > 0; i--) {
        int64_t j = (int64_t)draw_below(&d, (uint64_t)i + 1);
        int64_t t = l->perm[i];
        l->perm[i] = l->perm[j];
        l->perm[j] = t;
    }
}

/* A reference the loader owns: t itself, or a contiguous copy taken out of any pool. */
static kn_tensor *hold(kn_tensor *t) {
    return kn_is_contiguous(t) ? kn_retain(t) : kn_keep(kn_contiguous(t));
}

kn_loader *kn_loader_new(kn_tensor *x, kn_tensor *y, int64_t batch_size, bool shuffle,
                         bool drop_last, uint64_t seed) {
    KN_CHECK("kn_loader_new", x);
    char bx[KN_SHAPE_BUF], by[KN_SHAPE_BUF];
    if (batch_size <= 0)
        return kn__error("kn_loader_new: batch_size must be positive (got %lld)",
                         (long long)batch_size);
    if (x->ndim < 1 || (y && y->ndim < 1))
        return kn__error("kn_loader_new: x and y need a batch dim (dim 0); got a 0-dim tensor");
    if (y && y->shape[0] != x->shape[0])
        return kn__error("kn_loader_new: x %s and y %s differ in dim 0",
                         kn__shape_str(x->shape, x->ndim, bx), kn__shape_str(y->shape, y->ndim, by));
    kn_loader *l = calloc(1, sizeof *l);
    if (!l) return kn__error("kn_loader_new: out of memory");
    l->n = x->shape[0];
    l->batch = batch_size;
    l->nbatches = drop_last ? l->n / batch_size : l->n / batch_size + (l->n % batch_size != 0);
    l->shuffle = shuffle;
    l->seed = seed;
    if (shuffle && l->n > 0 && !(l->perm = malloc((size_t)l->n * sizeof *l->perm))) {
        free(l);
        return kn__error("kn_loader_new: out of memory for a permutation of %lld rows",
                         (long long)l->n);
    }
    l->x = hold(x);
    l->y = y ? hold(y) : NULL;
    if (!l->x || (y && !l->y)) {
        kn_loader_free(l);
        return NULL;
    }
    if (l->perm) shuffle_epoch(l);
    return l;
}

typedef struct { const int64_t *rows; const char *src; char *dst; size_t row; } gather_job;

static void gather_rows(void *p, int64_t b, int64_t e) {
    const gather_job *j = p;
    for (int64_t i = b; i < e; i++)
        memcpy(j->dst + (size_t)i * j->row, j->src + (size_t)j->rows[i] * j->row, j->row);
}

/* Rows [start, start + b) of the epoch's order, gathered from t. Shuffled
 * rows are scattered over a large tensor, so most come from memory: the
 * threads fetch them in parallel (a 64-row batch of 3 KiB rows took 26 us
 * on one). */
static kn_tensor *gather(const kn_loader *l, kn_tensor *t, int64_t start, int64_t b) {
    int64_t shape[KN_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = b;
    kn_tensor *out = kn__alloc(shape, t->ndim, t->dtype);
    if (!out) return NULL;
    size_t row = (size_t)kn__numel(t->shape + 1, t->ndim - 1) * kn_dtype_size(t->dtype);
    const char *src = kn__ptr(t);
    char *dst = kn__ptr(out);
    if (!l->perm) {
        memcpy(dst, src + (size_t)start * row, (size_t)b * row);
    } else {
        gather_job j = {l->perm + start, src, dst, row};
        kn__parallel_for(b, row >= 1024 ? 8 : (int64_t)(8192 / (row + 1)) + 1, gather_rows, &j);
    }
    return out;
}

bool kn_loader_next(kn_loader *l, kn_tensor **xb, kn_tensor **yb) {
    if (xb) *xb = NULL;
    if (yb) *yb = NULL;
    if (!l || !xb) return kn__null_arg("kn_loader_next"), false;
    if (l->step >= l->nbatches) return false;
    int64_t start = l->step * l->batch;
    int64_t b = l->n - start < l->batch ? l->n - start : l->batch;
    kn_tensor *gx = gather(l, l->x, start, b);
    kn_tensor *gy = l->y && yb && gx ? gather(l, l->y, start, b) : NULL;
    if (!gx || (l->y && yb && !gy)) {
        kn_release(gx);
        return false;
    }
    l->step++;
    *xb = gx;
    if (yb) *yb = gy;
    return true;
}

void kn_loader_reset(kn_loader *l) {
    if (!l) return;
    l->epoch++;
    l->step = 0;
    if (l->perm) shuffle_epoch(l);
}

int64_t kn_loader_batches(const kn_loader *l) { return l ? l->nbatches : -1; }

void kn_loader_free(kn_loader *l) {
    if (!l) return;
    kn_release(l->x);
    kn_release(l->y);
    free(l->perm);
    free(l);
}
