/* Checkpoints in the safetensors format. kn_save writes a temporary file and
 * renames it into place; kn_load validates the whole file and reads every
 * requested entry before it writes any destination. The header parser takes
 * strict JSON and only what safetensors needs: files are untrusted input. */
#include "../core/internal.h"
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tensor data is written and read as it lies in memory. */
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

#define MAX_HEADER (100u << 20)  /* the reference implementation's limit */
#define MAX_DEPTH 64              /* nesting allowed inside __metadata__ */

/* safetensors dtypes with whole-byte elements. The first five are Kiln's, in
 * kn_dtype order; the rest may sit in a file but cannot be loaded. */
typedef struct { const char *name; int size; int kn; } st_dtype;
static const st_dtype st_dtypes[] = {
    {"F32", 4, KN_F32}, {"F64", 8, KN_F64}, {"I32", 4, KN_I32}, {"I64", 8, KN_I64},
    {"BOOL", 1, KN_BOOL}, {"F16", 2, -1}, {"BF16", 2, -1}, {"I8", 1, -1}, {"U8", 1, -1},
    {"I16", 2, -1}, {"U16", 2, -1}, {"U32", 4, -1}, {"U64", 8, -1},
    {"F8_E4M3", 1, -1}, {"F8_E5M2", 1, -1},
};
#define N_ST_DTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

static bool utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07, min = 0x10000;
        else return false;
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        /* Overlong forms, UTF-16 surrogates and values past U+10FFFF are invalid. */
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

/* ================================ saving ================================ */

typedef struct { char *buf; size_t len, cap; bool oom; } sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->buf, cap);
        if (!p) { b->oom = true; return; }
        b->buf = p;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_int(sbuf *b, uint64_t v) {
    char t[24];
    sb_put(b, t, (size_t)snprintf(t, sizeof t, "%llu", (unsigned long long)v));
}

static void sb_json_string(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default:
            if (c < 0x20) sb_put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", c));
            else sb_put(b, s, 1);  /* UTF-8 passes through: JSON text is UTF-8 */
        }
    }
    sb_put(b, "\"", 1);
}

static bool write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        c += w;
        n -= (size_t)w;
    }
    return true;
}

typedef struct { const char *name; int idx; } named;

static int cmp_named(const void *a, const void *b) {
    return strcmp(((const named *)a)->name, ((const named *)b)->name);
}

/* Checks the arguments: non-NULL, valid UTF-8 names, no duplicates. */
static bool save_check(const char *path, const char *const *names, kn_tensor *const *ts, int n) {
    if (!path) return kn__null_arg("kn_save"), false;
    if (n < 0) return kn__error("kn_save: '%s': negative tensor count %d", path, n), false;
    if (n > 0 && (!names || !ts)) return kn__null_arg("kn_save"), false;
    for (int i = 0; i < n; i++) {
        if (!names[i]) return kn__error("kn_save: '%s': name %d is NULL", path, i), false;
        if (!ts[i]) return kn__error("kn_save: '%s': tensor '%.200s' is NULL", path, names[i]), false;
        if ((unsigned)ts[i]->dtype >= KN_DTYPE_COUNT)
            return kn__error("kn_save: '%s': tensor '%.200s' has an invalid dtype", path, names[i]), false;
        if (!utf8_valid(names[i], strlen(names[i])))
            return kn__error("kn_save: '%s': name %d is not valid UTF-8", path, i), false;
        if (strcmp(names[i], "__metadata__") == 0)
            return kn__error("kn_save: '%s': the name '__metadata__' is reserved", path), false;
    }
    named *sorted = malloc((size_t)(n ? n : 1) * sizeof *sorted);
    if (!sorted) return kn__error("kn_save: '%s': out of memory", path), false;
    for (int i = 0; i < n; i++) sorted[i] = (named){names[i], i};
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_named);
    for (int i = 1; i < n; i++) {
        if (strcmp(sorted[i - 1].name, sorted[i].name) == 0) {
            kn__error("kn_save: '%s': duplicate name '%.200s' (tensors %d and %d)", path,
                      sorted[i].name, sorted[i - 1].idx, sorted[i].idx);
            free(sorted);
            return false;
        }
    }
    free(sorted);
    return true;
}

static uint64_t tensor_bytes(const kn_tensor *t) {
    return (uint64_t)kn__numel(t->shape, t->ndim) * kn_dtype_size(t->dtype);
}

/* Builds "<u64 length><JSON header padded with spaces to a multiple of 8>". */
static bool build_header(sbuf *b, const char *const *names, kn_tensor *const *ts, int n,
                         const uint64_t *begin) {
    sb_put(b, "\0\0\0\0\0\0\0\0", 8);  /* length, filled in below */
    sb_puts(b, "{\"__metadata__\":{\"format\":\"kiln\"}");
    for (int i = 0; i < n; i++) {
        const kn_tensor *t = ts[i];
        sb_puts(b, ",");
        sb_json_string(b, names[i]);
        sb_puts(b, ":{\"dtype\":\"");
        sb_puts(b, st_dtypes[t->dtype].name);
        sb_puts(b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) sb_puts(b, ",");
            sb_int(b, (uint64_t)t->shape[d]);
        }
        sb_puts(b, "],\"data_offsets\":[");
        sb_int(b, begin[i]);
        sb_puts(b, ",");
        sb_int(b, begin[i] + tensor_bytes(t));
        sb_puts(b, "]}");
    }
    sb_puts(b, "}");
    while (!b->oom && b->len % 8) sb_puts(b, " ");
    if (b->oom) return false;
    uint64_t hlen = b->len - 8;
    for (int k = 0; k < 8; k++) b->buf[k] = (char)(hlen >> (8 * k));
    return true;
}

static bool write_tensor(int fd, const kn_tensor *t) {
    uint64_t nbytes = tensor_bytes(t);
    if (nbytes == 0) return true;
    if (kn_is_contiguous(t)) return write_all(fd, kn__ptr(t), nbytes);
    void *tmp = malloc(nbytes);
    if (!tmp) return errno = ENOMEM, false;
    kn_copy_out(t, tmp, nbytes);
    bool ok = write_all(fd, tmp, nbytes);
    int e = errno;
    free(tmp);
    errno = e;
    return ok;
}

/* Makes the rename itself durable; best effort, as not every filesystem can. */
static void sync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

static atomic_uint tmp_counter;  /* tells apart saves by threads of one process */

int kn_save(const char *path, const char *const *names, kn_tensor *const *tensors, int n) {
    if (!save_check(path, names, tensors, n)) return -1;

    /* Data goes widest dtype first, so with a header padded to 8 bytes every
     * tensor's data is aligned to its element size within the file. */
    uint64_t *begin = malloc((size_t)(n ? n : 1) * sizeof *begin);
    sbuf hdr = {0};
    if (!begin) return kn__error("kn_save: '%s': out of memory", path), -1;
    uint64_t off = 0;
    for (int size = 8; size >= 1; size /= 2)
        for (int i = 0; i < n; i++)
            if ((int)kn_dtype_size(tensors[i]->dtype) == size) {
                begin[i] = off;
                off += tensor_bytes(tensors[i]);
            }
    if (!build_header(&hdr, names, tensors, n, begin)) {
        free(begin);
        free(hdr.buf);
        return kn__error("kn_save: '%s': out of memory building the header", path), -1;
    }
    free(begin);
    if (hdr.len - 8 > MAX_HEADER) {
        free(hdr.buf);
        return kn__error("kn_save: '%s': the header would take %zu bytes (limit %u)", path,
                         hdr.len - 8, MAX_HEADER), -1;
    }

    size_t tlen = strlen(path) + 48;
    char *tmp = malloc(tlen);
    if (!tmp) {
        free(hdr.buf);
        return kn__error("kn_save: '%s': out of memory", path), -1;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&tmp_counter, 1));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        kn__error("kn_save: '%s': cannot create '%s': %s", path, tmp, strerror(errno));
        free(tmp);
        free(hdr.buf);
        return -1;
    }

    const char *step = "write";
    bool ok = write_all(fd, hdr.buf, hdr.len);
    for (int size = 8; ok && size >= 1; size /= 2)
        for (int i = 0; ok && i < n; i++)
            if ((int)kn_dtype_size(tensors[i]->dtype) == size) ok = write_tensor(fd, tensors[i]);
    if (ok && !(ok = fsync(fd) == 0)) step = "fsync";
    int err = errno;
    if (close(fd) != 0 && ok) ok = false, step = "close", err = errno;
    if (ok && !(ok = rename(tmp, path) == 0)) step = "rename", err = errno;
    if (ok) {
        sync_parent_dir(path);
    } else {
        unlink(tmp);
        kn__error("kn_save: '%s': %s of '%s' failed: %s", path, step, tmp, strerror(err));
    }
    free(tmp);
    free(hdr.buf);
    return ok ? 0 : -1;
}

/* ================================ loading ================================ */

typedef struct {
    char *name;
    const st_dtype *dt;
    int ndim;                    /* may exceed KN_MAX_DIMS: only that many are kept */
    int64_t shape[KN_MAX_DIMS];
    uint64_t numel, begin, end;  /* offsets relative to the data section */
} entry;

typedef struct {
    const char *p, *start, *end;  /* header text while parsing */
    entry *e;
    int n, cap;
    entry **by_name;              /* sorted, for duplicate checks and lookups */
    int fd;
    uint64_t data_off, data_size;
    char err[600];
} ckpt;

__attribute__((format(printf, 2, 3)))
static bool fail(ckpt *c, const char *fmt, ...) {
    if (c->err[0]) return false;  /* keep the first, most specific message */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return false;
}

static bool syntax(ckpt *c, const char *expected) {
    return fail(c, "header is not valid JSON: expected %s at byte %td", expected, c->p - c->start);
}

/* ---- a strict JSON reader for the safetensors header ---- */

static void ws(ckpt *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int peek(ckpt *c) {
    ws(c);
    return c->p < c->end ? (unsigned char)*c->p : -1;
}

static bool accept(ckpt *c, char ch) {
    if (peek(c) != (unsigned char)ch) return false;
    c->p++;
    return true;
}

static bool expect(ckpt *c, char ch) {
    char what[4] = {'\'', ch, '\'', 0};
    return accept(c, ch) || syntax(c, what);
}

static int hex4(const char *p) {
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char h = p[k];
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
              : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Reads a string into a new NUL-terminated *out. Decoding never lengthens
 * the text, so the raw length bounds the buffer. NUL characters are refused. */
static bool jstring(ckpt *c, char **out) {
    *out = NULL;
    if (!accept(c, '"')) return syntax(c, "a string");
    const char *q = c->p;
    while (q < c->end && *q != '"') q += *q == '\\' ? 2 : 1;
    if (q >= c->end) return fail(c, "header is not valid JSON: unterminated string");
    char *s = malloc((size_t)(q - c->p) + 1), *o = s;
    if (!s) return fail(c, "out of memory reading the header");
    while (*c->p != '"') {
        unsigned char ch = (unsigned char)*c->p;
        if (ch < 0x20) {
            free(s);
            return syntax(c, "no raw control character in a string");
        }
        if (ch != '\\') {
            *o++ = *c->p++;
            continue;
        }
        char e = c->p[1];
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            *o++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            c->p += 2;
            continue;
        }
        int u = e == 'u' && c->end - c->p >= 6 ? hex4(c->p + 2) : -1;
        if (u < 0) {
            free(s);
            return syntax(c, "a valid escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
        }
        c->p += 6;
        uint32_t cp = (uint32_t)u;
        if (cp >= 0xD800 && cp <= 0xDBFF) {  /* a high surrogate needs its low half */
            int lo = c->end - c->p >= 6 && c->p[0] == '\\' && c->p[1] == 'u' ? hex4(c->p + 2) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF) {
                free(s);
                return syntax(c, "a low surrogate \\uDC00-\\uDFFF after a high one");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
            c->p += 6;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            free(s);
            return syntax(c, "no lone low surrogate");
        }
        if (cp == 0) {
            free(s);
            return fail(c, "header string contains \\u0000");
        }
        o += put_utf8(o, cp);
    }
    c->p++;  /* closing quote */
    *o = 0;
    if (!utf8_valid(s, (size_t)(o - s))) {
        free(s);
        return fail(c, "header string is not valid UTF-8");
    }
    *out = s;
    return true;
}

/* Reads a non-negative JSON integer. */
static bool juint(ckpt *c, uint64_t *v, const char *what, const char *name) {
    ws(c);
    const char *p = c->p;
    bool neg = p < c->end && *p == '-';
    if (neg) p++;
    if (p >= c->end || *p < '0' || *p > '9')
        return fail(c, "%s of '%.200s' is not an integer (at header byte %td)", what, name, c->p - c->start);
    if (*p == '0' && p + 1 < c->end && p[1] >= '0' && p[1] <= '9')
        return syntax(c, "no leading zero in a number");
    uint64_t x = 0;
    bool big = false;
    for (; p < c->end && *p >= '0' && *p <= '9'; p++) {
        if (x > (UINT64_MAX - 9) / 10) big = true;
        x = x * 10 + (uint64_t)(*p - '0');
    }
    if (p < c->end && (*p == '.' || *p == 'e' || *p == 'E'))
        return fail(c, "%s of '%.200s' is not an integer (at header byte %td)", what, name, c->p - c->start);
    if (neg && x != 0) return fail(c, "%s of '%.200s' is negative", what, name);
    if (big || x > INT64_MAX) return fail(c, "%s of '%.200s' is too large", what, name);
    c->p = p;
    *v = x;
    return true;
}

static bool jliteral(ckpt *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return syntax(c, "a value");
    c->p += n;
    return true;
}

static bool digits(ckpt *c) {
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') return syntax(c, "a digit");
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    return true;
}

static bool jnumber(ckpt *c) {
    if (*c->p == '-') c->p++;
    if (c->p < c->end && *c->p == '0') c->p++;
    else if (!digits(c)) return false;
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!digits(c)) return false;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (!digits(c)) return false;
    }
    return true;
}

/* Checks and skips any JSON value (used for __metadata__ and unknown fields). */
static bool jskip(ckpt *c, int depth) {
    if (depth > MAX_DEPTH) return fail(c, "header nests more than %d levels deep", MAX_DEPTH);
    int ch = peek(c);
    char *s;
    switch (ch) {
    case '"':
        if (!jstring(c, &s)) return false;
        free(s);
        return true;
    case '{':
        c->p++;
        if (accept(c, '}')) return true;
        do {
            if (!jstring(c, &s)) return false;
            free(s);
            if (!expect(c, ':') || !jskip(c, depth + 1)) return false;
        } while (accept(c, ','));
        return expect(c, '}');
    case '[':
        c->p++;
        if (accept(c, ']')) return true;
        do {
            if (!jskip(c, depth + 1)) return false;
        } while (accept(c, ','));
        return expect(c, ']');
    case 't': return jliteral(c, "true");
    case 'f': return jliteral(c, "false");
    case 'n': return jliteral(c, "null");
    default:
        if (ch == '-' || (ch >= '0' && ch <= '9')) return jnumber(c);
        return syntax(c, "a value");
    }
}

static bool parse_shape(ckpt *c, entry *e) {
    if (!accept(c, '[')) return fail(c, "'shape' of '%.200s' is not an array", e->name);
    e->numel = 1;
    if (accept(c, ']')) return true;
    do {
        uint64_t d;
        if (!juint(c, &d, "'shape'", e->name)) return false;
        if (e->ndim < KN_MAX_DIMS) e->shape[e->ndim] = (int64_t)d;
        if (e->ndim == INT16_MAX) return fail(c, "'shape' of '%.200s' has too many dims", e->name);
        e->ndim++;
        if (__builtin_mul_overflow(e->numel, d, &e->numel) || e->numel > INT64_MAX)
            return fail(c, "'shape' of '%.200s' has too many elements (overflow)", e->name);
    } while (accept(c, ','));
    return expect(c, ']');
}

static bool parse_dtype(ckpt *c, entry *e) {
    if (peek(c) != '"') return fail(c, "'dtype' of '%.200s' is not a string", e->name);
    char *dt;
    if (!jstring(c, &dt)) return false;
    for (int k = 0; k < N_ST_DTYPES && !e->dt; k++)
        if (strcmp(dt, st_dtypes[k].name) == 0) e->dt = &st_dtypes[k];
    if (!e->dt) fail(c, "unknown dtype '%.40s' for '%.200s'", dt, e->name);
    free(dt);
    return e->dt != NULL;
}

static bool parse_offsets(ckpt *c, entry *e) {
    if (!accept(c, '[')) return fail(c, "'data_offsets' of '%.200s' is not an array", e->name);
    if (!juint(c, &e->begin, "'data_offsets'", e->name)) return false;
    if (!accept(c, ',') || !juint(c, &e->end, "'data_offsets'", e->name) || !accept(c, ']'))
        return fail(c, "'data_offsets' of '%.200s' is not [begin, end]", e->name);
    return true;
}

static bool parse_entry(ckpt *c, entry *e) {
    static const char *const fields[3] = {"dtype", "shape", "data_offsets"};
    bool seen[3] = {false, false, false};
    if (!accept(c, '{')) return fail(c, "entry '%.200s' is not an object", e->name);
    if (!accept(c, '}')) do {
        char *key;
        if (!jstring(c, &key)) return false;
        int f = 0;
        while (f < 3 && strcmp(key, fields[f]) != 0) f++;
        bool ok = expect(c, ':');
        if (ok && f < 3 && seen[f]) ok = fail(c, "entry '%.200s' has '%s' twice", e->name, key);
        else if (ok) ok = f == 0 ? parse_dtype(c, e) : f == 1 ? parse_shape(c, e)
                        : f == 2 ? parse_offsets(c, e)
                        : jskip(c, 1);  /* a field from a later format version */
        if (f < 3) seen[f] = true;
        free(key);
        if (!ok) return false;
    } while (accept(c, ','));
    if (!expect(c, '}')) return false;
    for (int f = 0; f < 3; f++)
        if (!seen[f]) return fail(c, "entry '%.200s' has no '%s'", e->name, fields[f]);
    return true;
}

static bool parse_header(ckpt *c) {
    if (!accept(c, '{')) return fail(c, "header is not a JSON object");
    bool meta = false;
    if (!accept(c, '}')) do {
        char *key;
        if (!jstring(c, &key)) return false;
        if (!expect(c, ':')) return free(key), false;
        if (strcmp(key, "__metadata__") == 0) {
            free(key);
            if (meta) return fail(c, "header has '__metadata__' twice");
            meta = true;
            if (peek(c) != '{') return fail(c, "'__metadata__' is not an object");
            if (!jskip(c, 0)) return false;
            continue;
        }
        if (c->n == c->cap) {
            int cap = c->cap ? c->cap * 2 : 16;
            entry *e = realloc(c->e, (size_t)cap * sizeof *e);
            if (!e) return free(key), fail(c, "out of memory reading the header");
            c->e = e;
            c->cap = cap;
        }
        entry *e = &c->e[c->n++];
        *e = (entry){.name = key};
        if (!parse_entry(c, e)) return false;
    } while (accept(c, ','));
    if (!expect(c, '}')) return false;
    ws(c);
    if (c->p != c->end) return syntax(c, "only spaces after the header object");
    return true;
}

/* ---- checks across entries ---- */

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(entry *const *)a)->name, (*(entry *const *)b)->name);
}

static int cmp_begin(const void *a, const void *b) {
    const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
    return x->begin != y->begin ? (x->begin < y->begin ? -1 : 1)
         : x->end != y->end ? (x->end < y->end ? -1 : 1) : 0;
}

static bool validate(ckpt *c) {
    for (int i = 0; i < c->n; i++) {
        entry *e = &c->e[i];
        uint64_t nbytes;
        if (__builtin_mul_overflow(e->numel, (uint64_t)e->dt->size, &nbytes))
            return fail(c, "entry '%.200s' is too large (overflow)", e->name);
        if (e->end < e->begin)
            return fail(c, "entry '%.200s' ends before it begins (data_offsets [%llu, %llu])", e->name,
                        (unsigned long long)e->begin, (unsigned long long)e->end);
        if (e->end > c->data_size)
            return fail(c, "entry '%.200s' (data_offsets [%llu, %llu]) runs past the %llu-byte data section",
                        e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                        (unsigned long long)c->data_size);
        if (e->end - e->begin != nbytes)
            return fail(c, "entry '%.200s' holds %llu bytes but its %s shape needs %llu", e->name,
                        (unsigned long long)(e->end - e->begin), e->dt->name, (unsigned long long)nbytes);
    }
    c->by_name = malloc((size_t)(c->n ? c->n : 1) * sizeof *c->by_name);
    entry **by_begin = malloc((size_t)(c->n ? c->n : 1) * sizeof *by_begin);
    if (!c->by_name || !by_begin) return free(by_begin), fail(c, "out of memory");
    for (int i = 0; i < c->n; i++) c->by_name[i] = by_begin[i] = &c->e[i];
    qsort(c->by_name, (size_t)c->n, sizeof *c->by_name, cmp_name);
    qsort(by_begin, (size_t)c->n, sizeof *by_begin, cmp_begin);
    bool ok = true;
    for (int i = 1; ok && i < c->n; i++)
        if (strcmp(c->by_name[i - 1]->name, c->by_name[i]->name) == 0)
            ok = fail(c, "duplicate entry '%.200s'", c->by_name[i]->name);
    /* Empty entries occupy no bytes, so they overlap nothing. */
    const entry *last = NULL;
    for (int i = 0; ok && i < c->n; i++) {
        const entry *e = by_begin[i];
        if (e->begin == e->end) continue;
        if (last && e->begin < last->end)
            ok = fail(c, "entries '%.200s' and '%.200s' overlap", last->name, e->name);
        if (!last || e->end > last->end) last = e;
    }
    free(by_begin);
    return ok;
}

static bool read_at(ckpt *c, void *buf, uint64_t n, uint64_t off) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = pread(c->fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return fail(c, "read failed: %s", strerror(errno));
        if (r == 0) return fail(c, "file ended early (was it truncated while loading?)");
        p += r;
        off += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return true;
}

static void ckpt_close(ckpt *c) {
    for (int i = 0; i < c->n; i++) free(c->e[i].name);
    free(c->e);
    free(c->by_name);
    if (c->fd >= 0) close(c->fd);
}

/* Opens and fully validates the file; on false c->err says why. */
static bool ckpt_open(ckpt *c, const char *path) {
    *c = (ckpt){.fd = open(path, O_RDONLY | O_CLOEXEC)};
    if (c->fd < 0) return fail(c, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(c->fd, &st) != 0) return fail(c, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail(c, "not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8)
        return fail(c, "file is %llu bytes, too short for a header (at least 8)", (unsigned long long)size);
    unsigned char len8[8];
    if (!read_at(c, len8, 8, 0)) return false;
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; k--) hlen = hlen << 8 | len8[k];
    if (hlen > MAX_HEADER)
        return fail(c, "header length %llu is over the %u-byte limit", (unsigned long long)hlen, MAX_HEADER);
    if (hlen > size - 8)
        return fail(c, "header length %llu runs past the end of the %llu-byte file",
                    (unsigned long long)hlen, (unsigned long long)size);
    char *text = malloc(hlen ? hlen : 1);
    if (!text) return fail(c, "out of memory reading the header");
    bool ok = read_at(c, text, hlen, 8);
    if (ok) {
        c->start = c->p = text;
        c->end = text + hlen;
        c->data_off = 8 + hlen;
        c->data_size = size - 8 - hlen;
        ok = parse_header(c) && validate(c);
    }
    free(text);
    c->start = c->p = c->end = NULL;
    return ok;
}

static entry *find(ckpt *c, const char *name) {
    entry key = {.name = (char *)name}, *kp = &key;
    entry **hit = bsearch(&kp, c->by_name, (size_t)c->n, sizeof *c->by_name, cmp_name);
    return hit ? *hit : NULL;
}

/* Checks that entry e can be read into d; the message names both. */
static bool fits(ckpt *c, const entry *e, const kn_tensor *d) {
    char fs[KN_SHAPE_BUF], ds[KN_SHAPE_BUF];
    int fnd = e->ndim < KN_MAX_DIMS ? e->ndim : KN_MAX_DIMS;
    bool same = e->dt->kn == (int)d->dtype && e->ndim == d->ndim;
    for (int k = 0; same && k < d->ndim; k++) same = e->shape[k] == d->shape[k];
    if (!same)
        return fail(c, "entry '%.200s' is %s %s%s but its destination is %s %s", e->name, e->dt->name,
                    kn__shape_str(e->shape, fnd, fs), e->ndim > KN_MAX_DIMS ? "(+more dims)" : "",
                    st_dtypes[d->dtype].name, kn__shape_str(d->shape, d->ndim, ds));
    /* Several elements of an expanded view share memory: they cannot hold distinct values. */
    for (int k = 0; k < d->ndim; k++)
        if (d->strides[k] == 0 && d->shape[k] > 1)
            return fail(c, "the destination of '%.200s' is an expanded view (stride 0 in dim %d)",
                        e->name, k);
    return true;
}

/* dst = the C-order values in buf, for any dst layout. */
static void copy_in(kn_tensor *dst, void *buf, size_t nbytes) {
    if (kn_is_contiguous(dst)) {
        memcpy(kn__ptr(dst), buf, nbytes);
    } else {
        kn_storage st = {.data = buf, .nbytes = nbytes};
        kn_tensor src;
        memset(&src, 0, sizeof src);
        src.dtype = dst->dtype;
        src.ndim = dst->ndim;
        memcpy(src.shape, dst->shape, sizeof src.shape);
        kn__contig_strides(src.shape, src.ndim, src.strides);
        src.storage = &st;
        kn__copy(dst, &src);
    }
    atomic_fetch_add(&dst->storage->version, 1);
}

int kn_load(const char *path, const char *const *names, kn_tensor *const *dest, int n) {
    if (!path) return kn__null_arg("kn_load"), -1;
    if (n < 0) return kn__error("kn_load: '%s': negative entry count %d", path, n), -1;
    if (n > 0 && (!names || !dest)) return kn__null_arg("kn_load"), -1;
    ckpt c;
    bool ok = ckpt_open(&c, path);
    entry **hits = calloc((size_t)(n ? n : 1), sizeof *hits);
    void **bufs = calloc((size_t)(n ? n : 1), sizeof *bufs);
    if (ok && (!hits || !bufs)) ok = fail(&c, "out of memory");
    for (int i = 0; ok && i < n; i++) {
        if (!names[i]) ok = fail(&c, "name %d is NULL", i);
        else if (!dest[i]) ok = fail(&c, "destination of '%.200s' is NULL", names[i]);
        else if (!(hits[i] = find(&c, names[i]))) ok = fail(&c, "no entry '%.200s'", names[i]);
        else if (hits[i]->dt->kn < 0)
            ok = fail(&c, "entry '%.200s' has dtype %s, which Kiln does not support", names[i],
                      hits[i]->dt->name);
        else ok = fits(&c, hits[i], dest[i]);
    }
    /* Read everything before touching any destination. */
    for (int i = 0; ok && i < n; i++) {
        uint64_t nbytes = hits[i]->end - hits[i]->begin;
        if (!(bufs[i] = malloc(nbytes ? nbytes : 1))) ok = fail(&c, "out of memory for '%.200s'", names[i]);
        else ok = read_at(&c, bufs[i], nbytes, c.data_off + hits[i]->begin);
        /* Kiln bools are 0 or 1; another byte from a file would break that. */
        unsigned char *bytes = bufs[i];
        if (ok && hits[i]->dt->kn == KN_BOOL)
            for (uint64_t k = 0; k < nbytes; k++) bytes[k] = bytes[k] != 0;
    }
    for (int i = 0; ok && i < n; i++) copy_in(dest[i], bufs[i], hits[i]->end - hits[i]->begin);
    if (!ok) kn__error("kn_load: '%s': %s", path, c.err);
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(hits);
    ckpt_close(&c);
    return ok ? 0 : -1;
}

int kn_checkpoint_entries(const char *path, char ***names, int *n) {
    if (names) *names = NULL;
    if (n) *n = 0;
    if (!path || !names || !n) return kn__null_arg("kn_checkpoint_entries"), -1;
    ckpt c;
    bool ok = ckpt_open(&c, path);
    char **out = ok ? calloc((size_t)(c.n ? c.n : 1), sizeof *out) : NULL;
    if (ok && !out) ok = fail(&c, "out of memory");
    for (int i = 0; ok && i < c.n; i++)
        if (!(out[i] = strdup(c.e[i].name))) ok = fail(&c, "out of memory");
    if (ok) {
        *names = out;
        *n = c.n;
    } else {
        for (int i = 0; out && i < c.n; i++) free(out[i]);
        free(out);
        kn__error("kn_checkpoint_entries: '%s': %s", path, c.err);
    }
    ckpt_close(&c);
    return ok ? 0 : -1;
}
