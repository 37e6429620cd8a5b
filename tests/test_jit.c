/* The CPU JIT (jit/): chain kernels are bitwise equal to the eager ops on
 * random and special values, vectorize without libm calls, compile once per
 * chain, reject bad chains with an error, and split into ranges freely. */
#include "../jit/jit.h"
#include "helpers.h"
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Every test gets an empty private kernel cache (Criterion runs each test in
 * its own process, and the JIT reads KN_CACHE_DIR at first use), so compile
 * counts do not depend on what other tests or earlier runs left on disk. */
static char cache_dir[64];

static void jit_setup(void) {
    test_setup(KN_NO_SEED);
    snprintf(cache_dir, sizeof cache_dir, "/tmp/kiln-jit-test-XXXXXX");
    cr_assert(mkdtemp(cache_dir));
    setenv("KN_CACHE_DIR", cache_dir, 1);
    kn__jit_keep_ir(true);
}

static void jit_teardown(void) {
    remove_dir(cache_dir);
    test_teardown();
}

TestSuite(jit, .init = jit_setup, .fini = jit_teardown);

#define NOTNULL(t) cr_assert((t), "NULL: %s", kn_last_error() ? kn_last_error() : "(no error)")
#define IN(k) {.kind = KN_JIT_INPUT, .arg = (k)}
#define C(v) {.kind = KN_JIT_CONST, .value = (v)}
#define OP1(o, x) {.kind = KN_JIT_OP, .op = KN_OP_##o, .a = (x)}
#define OP2(o, x, y) {.kind = KN_JIT_OP, .op = KN_OP_##o, .a = (x), .b = (y)}
#define N (1 << 20)

/* A pointwise kernel storing the last step of a chain over nin inputs. */
static kn_jit_kernel chain_kernel(const kn_jit_step *s, int n, int nin) {
    kn_jit_phase ph = {KN_PHASE_STORE, n - 1, nin, false, false};
    kn_jit_desc d = {.nin = nin, .nout = 1, .steps = s, .nsteps = n, .phases = &ph, .nphases = 1};
    for (int k = 0; k <= nin && k < KN_JIT_MAX_OPERANDS; k++) d.inner[k] = 1;
    return kn__jit_kernel(&d);
}

/* Runs a kernel over n contiguous elements of nops operands, [begin, end). */
static void run_1d(kn_jit_kernel k, void *const *ops, int nops, int64_t n, int64_t begin, int64_t end) {
    void *args[KN_JIT_MAX_OPERANDS + 1];
    int64_t lay[2 + KN_JIT_MAX_OPERANDS] = {1, n};
    for (int i = 0; i < nops; i++) {
        args[i] = ops[i];
        lay[2 + i] = 1;
    }
    args[nops] = lay;
    cr_assert_eq(kn__jit_run(k, args, begin, end), 0);
}

/* exp(relu(tanh(x*0.5+1)^2 - 0.25) * 3) */
static const kn_jit_step chain_a[] = {
    IN(0), C(0.5f), OP2(mul, 0, 1), C(1.0f), OP2(add, 2, 3), OP1(tanh, 4), OP2(mul, 5, 5),
    C(0.25f), OP2(sub, 6, 7), OP1(relu, 8), C(3.0f), OP2(mul, 9, 10), OP1(exp, 11),
};
static kn_tensor *eager_a(kn_tensor *x) {
    kn_tensor *t = kn_tanh(kn_add_scalar(kn_mul_scalar(x, 0.5), 1.0));
    return kn_exp(kn_mul_scalar(kn_relu(kn_sub_scalar(kn_mul(t, t), 0.25)), 3.0));
}

/* sqrt(min(max(((x + w) * 1.5 - w) / (|x| + 0.1), -w), 4)): ten ops, two inputs */
static const kn_jit_step chain_b[] = {
    IN(0), IN(1), OP2(add, 0, 1), C(1.5f), OP2(mul, 2, 3), OP2(sub, 4, 1), OP1(abs, 0),
    C(0.1f), OP2(add, 6, 7), OP2(div, 5, 8), OP1(neg, 1), OP2(maximum, 9, 10), C(4.0f),
    OP2(minimum, 11, 12), OP1(sqrt, 13),
};
static kn_tensor *eager_b(kn_tensor *x, kn_tensor *w) {
    kn_tensor *q = kn_div(kn_sub(kn_mul_scalar(kn_add(x, w), 1.5), w), kn_add_scalar(kn_abs(x), 0.1));
    return kn_sqrt(kn_minimum(kn_maximum(q, kn_neg(w)), kn_scalar(4.0, KN_F32)));
}

/* gelu(x) - log(sigmoid(w)) * x, the remaining formulas */
static const kn_jit_step chain_c[] = {
    IN(0), IN(1), OP1(gelu, 0), OP1(sigmoid, 1), OP1(log, 3), OP2(mul, 4, 0), OP2(sub, 2, 5),
};
static kn_tensor *eager_c(kn_tensor *x, kn_tensor *w) {
    return kn_sub(kn_gelu(x, KN_GELU_ERF), kn_mul(kn_log(kn_sigmoid(w)), x));
}

static uint64_t rng = 0x243f6a8885a308d3u;
static uint32_t rnd32(void) { /* splitmix64, high half */
    uint64_t z = (rng += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* Special values first, then thirds: uniform in [-12, 12], in [-1, 1], and
 * arbitrary bit patterns (every exponent, NaNs, infinities, denormals). */
static kn_tensor *test_values(void) {
    static const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 1e-45f, -1e-45f,
                                    1e-40f, -1e-40f, 1.17549435e-38f, 3.4028235e38f, -3.4028235e38f,
                                    1.0f, -1.0f, 0.5f, -2.0f, 88.7f, -88.7f, 100.0f, -100.0f};
    kn_tensor *t = kn_empty(KN_SHAPE(N), KN_F32);
    float *p = kn_data(t);
    size_t ns = sizeof special / sizeof special[0];
    for (int64_t i = 0; i < N; i++) {
        uint32_t u = rnd32();
        float r = (float)u * 0x1p-32f;
        if ((size_t)i < ns) p[i] = special[i];
        else if (i % 3 == 0) p[i] = -12.0f + 24.0f * r;
        else if (i % 3 == 1) p[i] = -1.0f + 2.0f * r;
        else memcpy(&p[i], &u, sizeof u);
    }
    return t;
}

static kn_tensor *run_kernel(kn_jit_kernel k, kn_tensor *const *in, int nin, int64_t split) {
    kn_tensor *out = kn_empty(KN_SHAPE(N), KN_F32);
    void *args[4];
    for (int i = 0; i < nin; i++) args[i] = kn_data(in[i]);
    args[nin] = kn_data(out);
    run_1d(k, args, nin + 1, N, 0, split);
    run_1d(k, args, nin + 1, N, split, N);
    return out;
}

/* Bitwise equal; two NaNs count as equal whatever their payloads (the IEEE
 * standard does not fix which operand's payload an op propagates). */
static void assert_bitwise(const kn_tensor *got, const kn_tensor *want) {
    const uint32_t *g = kn_data(got), *w = kn_data(want);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < N; i++) {
        float gf, wf;
        memcpy(&gf, &g[i], 4);
        memcpy(&wf, &w[i], 4);
        if (g[i] != w[i] && !(isnan(gf) && isnan(wf)) && bad++ == 0) first = i;
    }
    cr_assert_eq(bad, 0, "%lld of %d differ, first at %lld: jit %08x eager %08x", (long long)bad, N,
                 (long long)first, first >= 0 ? g[first] : 0, first >= 0 ? w[first] : 0);
}

static void check_chain(const kn_jit_step *s, int n, int nin, kn_tensor *want, kn_tensor *const *in) {
    NOTNULL(want);
    kn_jit_kernel k = chain_kernel(s, n, nin);
    NOTNULL(k);
    assert_bitwise(run_kernel(k, in, nin, N), want);
}

Test(jit, chain_bitwise_equals_eager) {
    kn_tensor *x = test_values(), *w = test_values();
    check_chain(chain_a, 13, 1, eager_a(x), &x);
    check_chain(chain_b, 15, 2, eager_b(x, w), (kn_tensor *[]){x, w});
    check_chain(chain_c, 7, 2, eager_c(x, w), (kn_tensor *[]){x, w});
}

/* Every supported op alone, on both argument orders for binary ones. */
Test(jit, single_ops_bitwise_equal_eager) {
    kn_tensor *x = test_values(), *w = test_values();
    static const kn_op un[] = {KN_OP_exp, KN_OP_log, KN_OP_sqrt, KN_OP_rsqrt, KN_OP_tanh,
                               KN_OP_sigmoid, KN_OP_sin, KN_OP_cos, KN_OP_erf, KN_OP_gelu,
                               KN_OP_neg, KN_OP_abs, KN_OP_relu};
    kn_tensor *(*const ue[])(kn_tensor *) = {kn_exp, kn_log, kn_sqrt, kn_rsqrt, kn_tanh, kn_sigmoid,
                                             kn_sin, kn_cos, kn_erf, NULL, kn_neg, kn_abs, kn_relu};
    for (size_t i = 0; i < sizeof un / sizeof un[0]; i++) {
        kn_jit_step s[] = {IN(0), {.kind = KN_JIT_OP, .op = un[i], .a = 0}};
        check_chain(s, 2, 1, ue[i] ? ue[i](x) : kn_gelu(x, KN_GELU_ERF), &x);
    }
    static const kn_op bin[] = {KN_OP_add, KN_OP_sub, KN_OP_mul, KN_OP_div, KN_OP_pow,
                                KN_OP_maximum, KN_OP_minimum};
    kn_tensor *(*const be[])(kn_tensor *, kn_tensor *) = {kn_add, kn_sub, kn_mul, kn_div, kn_pow,
                                                          kn_maximum, kn_minimum};
    for (size_t i = 0; i < sizeof bin / sizeof bin[0]; i++) {
        kn_jit_step s[] = {IN(0), IN(1), {.kind = KN_JIT_OP, .op = bin[i], .a = 0, .b = 1}};
        check_chain(s, 3, 2, be[i](x, w), (kn_tensor *[]){x, w});
    }
}

/* Every formula is inlined: the only calls left are LLVM intrinsics and the
 * row offset helper, which only domains of three or more dims call. */
static void only_intrinsic_calls(const char *ir) {
    for (const char *p = strstr(ir, "call "); p; p = strstr(p + 1, "call ")) {
        const char *at = strchr(p, '@'), *eol = strchr(p, '\n');
        cr_assert(at && (!eol || at < eol) && (!strncmp(at, "@llvm.", 6) || !strncmp(at, "@kn_jit_offsets(", 16)),
                  "a call survives: %.80s", p);
    }
}

/* The loop is vectorized with no libm or formula calls left. */
Test(jit, kernel_is_vectorized_without_calls) {
    NOTNULL(chain_kernel(chain_a, 13, 1));
    char *ir = kn__jit_last_ir();
    cr_assert(ir);
    cr_assert(strstr(ir, "<8 x float>") || strstr(ir, "<16 x float>"), "not vectorized:\n%s", ir);
    only_intrinsic_calls(ir);
    cr_assert(!strstr(ir, "@expf") && !strstr(ir, "@logf") && !strstr(ir, "@tanhf"));
    free(ir);
}

Test(jit, same_chain_compiles_once) {
    kn_jit_step s[] = {IN(0), C(-7.25f), OP2(mul, 0, 1), OP1(sigmoid, 2)};
    uint64_t before = kn__jit_compile_count();
    kn_jit_kernel k1 = chain_kernel(s, 4, 1);
    NOTNULL(k1);
    cr_assert_eq(kn__jit_compile_count(), before + 1);
    s[1].arg = 5; /* unused fields do not matter */
    s[3].b = 99;
    cr_assert_eq(chain_kernel(s, 4, 1), k1);
    cr_assert_eq(kn__jit_compile_count(), before + 1);
    s[1].value = -7.0f; /* a different constant is a different chain */
    kn_jit_kernel k2 = chain_kernel(s, 4, 1);
    NOTNULL(k2);
    cr_assert_neq(k2, k1);
    cr_assert_eq(kn__jit_compile_count(), before + 2);
}

Test(jit, invalid_chains_give_errors) {
    kn_jit_step later[] = {IN(0), OP2(add, 0, 2), OP1(exp, 0)};
    EXPECT_ERR(chain_kernel(later, 3, 1), "not an earlier step");
    kn_jit_step self[] = {IN(0), OP1(exp, 1)};
    EXPECT_ERR(chain_kernel(self, 2, 1), "not an earlier step");
    kn_jit_step input[] = {IN(1)};
    EXPECT_ERR(chain_kernel(input, 1, 1), "reads an output no earlier phase wrote");
    kn_jit_step reduce[] = {IN(0), OP1(sum, 0)};
    EXPECT_ERR(chain_kernel(reduce, 2, 1), "op sum is not");
    kn_jit_step cmp[] = {IN(0), OP2(logical_and, 0, 0)}; /* elementwise, but no float formula */
    EXPECT_ERR(chain_kernel(cmp, 2, 1), "op logical_and has no f32 formula");
    kn_jit_step clamp[] = {IN(0), OP1(clamp, 0)};
    EXPECT_ERR(chain_kernel(clamp, 2, 1), "op clamp has no f32 formula");
    kn_jit_step bad_op[] = {IN(0), {.kind = KN_JIT_OP, .op = (kn_op)9999, .a = 0}};
    EXPECT_ERR(chain_kernel(bad_op, 2, 1), "unknown op");
    kn_jit_step bad_kind[] = {{.kind = (kn_jit_kind)7}};
    EXPECT_ERR(chain_kernel(bad_kind, 1, 0), "unknown kind");
    EXPECT_ERR(chain_kernel(NULL, 3, 1), "1 to");
    EXPECT_ERR(chain_kernel(input, 0, 1), "1 to");
    EXPECT_ERR(chain_kernel(input, 1, -1), "operands");
    /* The JIT still works after the failures. */
    kn_clear_error();
    NOTNULL(chain_kernel((kn_jit_step[]){IN(0), OP1(neg, 0)}, 2, 1));
}

Test(jit, split_ranges_give_the_same_result) {
    kn_tensor *x = test_values();
    kn_jit_kernel k = chain_kernel(chain_a, 13, 1);
    NOTNULL(k);
    kn_tensor *whole = run_kernel(k, &x, 1, N);
    assert_bitwise(run_kernel(k, &x, 1, N / 2), whole);
    assert_bitwise(run_kernel(k, &x, 1, 12345), whole); /* unaligned split, odd tails */
    /* empty and reversed ranges write nothing */
    kn_tensor *out = kn_zeros(KN_SHAPE(N), KN_F32);
    run_1d(k, (void *[]){kn_data(x), kn_data(out)}, 2, N, 5, 5);
    run_1d(k, (void *[]){kn_data(x), kn_data(out)}, 2, N, 9, 3);
    cr_assert_eq(((float *)kn_data(out))[5], 0.0f);
}

/* A chain of constants only (no inputs) fills the output. */
Test(jit, constant_chain) {
    kn_jit_kernel k = chain_kernel((kn_jit_step[]){C(2.0f), OP1(sqrt, 0)}, 2, 0);
    NOTNULL(k);
    float out[37];
    run_1d(k, (void *[]){out}, 1, 37, 0, 37);
    for (int i = 0; i < 37; i++) cr_assert_eq(out[i], sqrtf(2.0f));
}

/* Threads asking for the same new chain at once get one compile. */
static void *compile_race(void *out) {
    kn_jit_step s[] = {IN(0), C(0.125f), OP2(pow, 0, 1), OP1(cos, 2)};
    *(kn_jit_kernel *)out = chain_kernel(s, 4, 1);
    return NULL;
}

Test(jit, concurrent_requests_compile_once) {
    uint64_t before = kn__jit_compile_count();
    pthread_t t[4];
    kn_jit_kernel k[4];
    for (int i = 0; i < 4; i++) cr_assert_eq(pthread_create(&t[i], NULL, compile_race, &k[i]), 0);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 4; i++) cr_assert(k[i] && k[i] == k[0]);
    cr_assert_eq(kn__jit_compile_count(), before + 1);
}

/* ---- the kernel cache on disk ---- */

/* Counts entries (*.kn) and temporary files (.tmp-*) in dir; names[] gets
 * the entries' names if given. */
static int count_files(const char *dir, int *ntmp, char names[][64], int max) {
    DIR *d = opendir(dir);
    cr_assert(d, "cannot open %s", dir);
    int n = 0, t = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (!strncmp(e->d_name, ".tmp-", 5)) t++;
        else if (len > 3 && !strcmp(e->d_name + len - 3, ".kn")) {
            if (names && n < max) snprintf(names[n], 64, "%s", e->d_name);
            n++;
        }
    }
    closedir(d);
    if (ntmp) *ntmp = t;
    return n;
}

typedef struct {
    const kn_jit_step *s;
    int n, nin;
} chain;
static const chain ca = {chain_a, 13, 1}, cb = {chain_b, 15, 2}, cc = {chain_c, 7, 2};

/* Compiles the chains in a fresh child process, after reading a byte from
 * go if go >= 0 (a start signal). Returns 100 if a chain failed, else
 * 10 * disk hits + LLVM compiles. Children touch only the JIT: a child of a
 * process with running worker threads could not use the thread pool. */
static int child_compile(const chain *cs, int ncs, int go) {
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        char c;
        if (go >= 0 && read(go, &c, 1) < 0) _exit(101);
        for (int i = 0; i < ncs; i++)
            if (!chain_kernel(cs[i].s, cs[i].n, cs[i].nin)) _exit(100);
        _exit((int)(10 * kn__jit_disk_hits() + kn__jit_compile_count()));
    }
    return pid;
}

static int wait_child(pid_t pid) {
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st), "the child died (status %d)", st);
    return WEXITSTATUS(st);
}

static int in_child(const chain *cs, int ncs) { return wait_child(child_compile(cs, ncs, -1)); }

/* These tests need the disk cache even in a run with KN_CACHE=0. */
static void disk_on(void) { setenv("KN_CACHE", "1", 1); }

static void check_a(void) {
    kn_tensor *x = test_values();
    check_chain(chain_a, 13, 1, eager_a(x), &x);
}

Test(jit, first_compile_writes_one_entry) {
    disk_on();
    int ntmp;
    check_a();
    cr_assert_eq(kn__jit_compile_count(), 1);
    cr_assert_eq(kn__jit_disk_writes(), 1);
    cr_assert_eq(kn__jit_disk_hits(), 0);
    cr_assert_eq(count_files(cache_dir, &ntmp, NULL, 0), 1);
    cr_assert_eq(ntmp, 0);
    struct stat st;
    cr_assert_eq(stat(cache_dir, &st), 0);
    cr_assert_eq(st.st_mode & 077, 0, "the cache directory must stay private");
}

Test(jit, fresh_process_loads_from_disk) {
    disk_on();
    cr_assert_eq(in_child(&ca, 1), 1); /* compiled and written */
    check_a();
    cr_assert_eq(kn__jit_disk_hits(), 1);
    cr_assert_eq(kn__jit_compile_count(), 0, "a disk hit runs no LLVM compile");
    cr_assert_eq(kn__jit_disk_writes(), 0);
    cr_assert_null(kn__jit_last_ir());
    cr_assert_eq(count_files(cache_dir, NULL, NULL, 0), 1);
}

/* Entries damaged three ways (truncated, a byte of the object flipped, a
 * byte of the key in the header flipped) are removed and compiled again. */
static void damage(const char *name, int how) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", cache_dir, name);
    struct stat st;
    cr_assert_eq(stat(p, &st), 0);
    if (how == 0) {
        cr_assert_eq(truncate(p, st.st_size / 2), 0);
        return;
    }
    off_t at = how == 1 ? st.st_size - 100 : 32 + 20; /* the object; the key after the header */
    int fd = open(p, O_RDWR);
    cr_assert(fd >= 0);
    unsigned char c;
    cr_assert_eq(pread(fd, &c, 1, at), 1);
    c ^= 0x55;
    cr_assert_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);
}

Test(jit, damaged_entries_are_removed_and_recompiled) {
    disk_on();
    const chain cs[3] = {ca, cb, cc};
    for (int i = 0; i < 3; i++) cr_assert_eq(in_child(&cs[i], 1), 1);
    /* Damage each file in turn, through a child that must not load it. */
    char names[3][64];
    cr_assert_eq(count_files(cache_dir, NULL, names, 3), 3);
    for (int how = 0; how < 3; how++) {
        damage(names[how], how);
        char p[256];
        snprintf(p, sizeof p, "%s/%s", cache_dir, names[how]);
        /* Two chains hit, the damaged one is compiled again (never run). */
        cr_assert_eq(in_child(cs, 3), 21, "damage %d not detected", how);
        struct stat st;
        cr_assert_eq(stat(p, &st), 0, "the entry was not written again");
        cr_assert_eq(in_child(cs, 3), 30);
    }
    /* And here, with damage to all three at once, results stay exact. */
    for (int how = 0; how < 3; how++) damage(names[how], how);
    kn_tensor *x = test_values(), *w = test_values();
    check_chain(chain_a, 13, 1, eager_a(x), &x);
    check_chain(chain_b, 15, 2, eager_b(x, w), (kn_tensor *[]){x, w});
    check_chain(chain_c, 7, 2, eager_c(x, w), (kn_tensor *[]){x, w});
    cr_assert_eq(kn__jit_disk_hits(), 0);
    cr_assert_eq(kn__jit_compile_count(), 3);
    cr_assert_eq(kn__jit_disk_writes(), 3);
    int ntmp;
    cr_assert_eq(count_files(cache_dir, &ntmp, NULL, 0), 3);
    cr_assert_eq(ntmp, 0);
}

Test(jit, cache_off_writes_nothing) {
    setenv("KN_CACHE", "0", 1);
    check_a();
    cr_assert_eq(kn__jit_compile_count(), 1);
    cr_assert_eq(kn__jit_disk_writes(), 0);
    int ntmp;
    cr_assert_eq(count_files(cache_dir, &ntmp, NULL, 0), 0);
    cr_assert_eq(ntmp, 0);
}

Test(jit, shared_cache_dir_is_refused) {
    disk_on();
    cr_assert_eq(chmod(cache_dir, 0777), 0);
    FILE *err = tmpfile();
    cr_assert(err);
    fflush(stderr);
    int saved = dup(2);
    cr_assert(saved >= 0 && dup2(fileno(err), 2) == 2);
    kn_jit_kernel k1 = chain_kernel(chain_b, 15, 2);
    kn_jit_kernel k2 = chain_kernel(chain_c, 7, 2);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    NOTNULL(k1 && k2);
    check_a();
    char text[1024] = {0};
    rewind(err);
    size_t n = fread(text, 1, sizeof text - 1, err);
    fclose(err);
    char want[256];
    snprintf(want, sizeof want, "kiln: not using the kernel cache at %s: ", cache_dir);
    cr_assert(n > 0 && strstr(text, want), "no warning, stderr was: %s", text);
    cr_assert_null(strstr(strstr(text, want) + 1, want), "warned twice: %s", text);
    cr_assert_eq(kn__jit_disk_writes(), 0);
    cr_assert_eq(kn__jit_compile_count(), 3);
    cr_assert_eq(count_files(cache_dir, NULL, NULL, 0), 0);
}

/* Processes compiling the same chain at once all succeed and leave one
 * valid entry and no temporary files. */
Test(jit, concurrent_processes_share_one_entry) {
    disk_on();
    int go[2];
    cr_assert_eq(pipe(go), 0);
    pid_t pid[4];
    for (int i = 0; i < 4; i++) pid[i] = child_compile(&ca, 1, go[0]);
    close(go[0]);
    cr_assert_eq(write(go[1], "gogo", 4), 4); /* one byte per child: all start now */
    close(go[1]);
    for (int i = 0; i < 4; i++) {
        int r = wait_child(pid[i]);
        cr_assert(r == 1 || r == 10, "child %d: %d", i, r);
    }
    int ntmp;
    cr_assert_eq(count_files(cache_dir, &ntmp, NULL, 0), 1);
    cr_assert_eq(ntmp, 0);
    check_a(); /* loaded from that entry */
    cr_assert_eq(kn__jit_disk_hits(), 1);
    cr_assert_eq(kn__jit_compile_count(), 0);
}

/* ---- fusion decisions and row kernels, through kn_function ---- */

typedef kn_tensor *(*body_fn)(kn_tensor *const *in);
typedef struct { body_fn f; } fn_ctx;
static int run_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    out[0] = ((fn_ctx *)ctx)->f(in);
    return out[0] ? 0 : -1;
}

/* Traces f over in, checks the plan has `nodes` nodes of which `fused` are
 * kernels, and that two replays give eager's result (bitwise, or within
 * rtol for row kernels, which sum in their own order). */
static void check_plan(body_fn f, kn_tensor *const *in, int nin, int nodes, int fused, double rtol) {
    fn_ctx c = {f};
    kn_tensor *want = f(in), *got;
    NOTNULL(want);
    kn_fn *fn = kn_function("plan", run_body, &c, nin, 1, NULL);
    for (int call = 0; call < 3; call++) {
        cr_assert_eq(kn_call(fn, in, &got), 0, "%s", kn_last_error());
        if (rtol == 0) assert_equal(got, want);
        else assert_close(got, want, rtol, rtol);
    }
    char *text = dump_of(fn, kn_fn_dump);
    int nf = 0;
    for (const char *p = strstr(text, "= fused<"); p; p = strstr(p + 1, "= fused<")) nf++;
    cr_assert_eq(kn_fn_stats(fn).nodes, nodes, "%s", text);
    cr_assert_eq(nf, fused, "%s", text);
    free(text);
    kn_fn_free(fn);
}

/* GELU written out by hand: 0.5 x (1 + tanh(0.7978845608 (x + 0.044715 x^3))) */
static kn_tensor *gelu_chain(kn_tensor *const *in) {
    kn_tensor *x = in[0], *x3 = kn_mul(kn_mul(x, x), x);
    kn_tensor *t = kn_tanh(kn_mul_scalar(kn_add(x, kn_mul_scalar(x3, 0.044715)), 0.7978845608));
    return kn_mul(kn_mul_scalar(x, 0.5), kn_add_scalar(t, 1.0));
}
static kn_tensor *bias_relu(kn_tensor *const *in) { return kn_relu(kn_add(in[0], in[1])); }
static kn_tensor *softmax_last(kn_tensor *const *in) { return kn_softmax(in[0], -1); }
static kn_tensor *log_softmax_last(kn_tensor *const *in) { return kn_log_softmax(in[0], 1); }
static kn_tensor *softmax_consumers(kn_tensor *const *in) {
    return kn_mul_scalar(kn_sub(kn_softmax(kn_mul_scalar(in[0], 2.0), 1), in[1]), 0.5);
}
static kn_tensor *layer_norm_affine(kn_tensor *const *in) {
    return kn_relu(kn_layer_norm(kn_add(in[0], in[1]), 1, in[2], in[3], 1e-5));
}
static kn_tensor *softmax_of_sum(kn_tensor *const *in) { return kn_softmax(kn_add(in[0], in[1]), -1); }
static kn_tensor *sum_rows(kn_tensor *const *in) { return kn_sum(kn_mul(in[0], in[1]), KN_DIMS(1), false); }
static kn_tensor *mean_rows(kn_tensor *const *in) { return kn_mean(kn_exp(in[0]), KN_DIMS(-1), true); }
static kn_tensor *max_rows(kn_tensor *const *in) { return kn_max(kn_abs(in[0]), KN_DIMS(1), false); }
static kn_tensor *centered(kn_tensor *const *in) {  /* a reduction read back along its row */
    kn_tensor *d = kn_sub(in[0], kn_mean(in[0], KN_DIMS(1), true));
    return kn_mean(kn_mul(d, d), KN_DIMS(1), true);
}

Test(jit, elementwise_chains_with_broadcasts_are_one_kernel) {
    kn_tensor *x = kn_randn(KN_SHAPE(37, 130), KN_F32), *b = kn_randn(KN_SHAPE(130), KN_F32);
    check_plan(gelu_chain, &x, 1, 1, 1, 0);
    check_plan(bias_relu, (kn_tensor *[]){x, b}, 2, 1, 1, 0);
    kn_tensor *col = kn_randn(KN_SHAPE(37, 1), KN_F32);  /* broadcast along rows */
    check_plan(bias_relu, (kn_tensor *[]){x, col}, 2, 1, 1, 0);
    /* three dims that do not merge: rows found by the offset helper */
    kn_tensor *x3 = kn_randn(KN_SHAPE(3, 4, 21), KN_F32), *y3 = kn_randn(KN_SHAPE(3, 1, 21), KN_F32);
    check_plan(bias_relu, (kn_tensor *[]){x3, y3}, 2, 1, 1, 0);
    check_plan(softmax_of_sum, (kn_tensor *[]){x3, y3}, 2, 1, 1, 1e-6);
}

Test(jit, row_ops_are_one_kernel_with_their_neighbours) {
    kn_tensor *x = kn_randn(KN_SHAPE(33, 257), KN_F32), *y = kn_rand(KN_SHAPE(33, 257), KN_F32);
    kn_tensor *w = kn_randn(KN_SHAPE(257), KN_F32), *b = kn_randn(KN_SHAPE(257), KN_F32);
    check_plan(softmax_last, &x, 1, 1, 1, 1e-6);
    check_plan(log_softmax_last, &x, 1, 1, 1, 1e-6);
    check_plan(softmax_consumers, (kn_tensor *[]){x, y}, 2, 1, 1, 1e-6);
    check_plan(layer_norm_affine, (kn_tensor *[]){x, y, w, b}, 4, 1, 1, 1e-5);
    check_plan(sum_rows, (kn_tensor *[]){x, y}, 2, 1, 1, 1e-6);
    check_plan(mean_rows, &x, 1, 1, 1, 1e-6);
    check_plan(max_rows, &x, 1, 1, 1, 0); /* a max is exact */
    check_plan(centered, &x, 1, 1, 1, 1e-5);
}

/* Comparisons fuse into the where or cast that reads them (booleans are
 * floats inside the kernel), bitwise equal to eager over special values. */
static kn_op cmp_op;
static kn_tensor *cmp_of(kn_tensor *a, kn_tensor *b) {
    switch (cmp_op) {
    case KN_OP_eq: return kn_eq(a, b);
    case KN_OP_ne: return kn_ne(a, b);
    case KN_OP_lt: return kn_lt(a, b);
    case KN_OP_le: return kn_le(a, b);
    case KN_OP_gt: return kn_gt(a, b);
    default: return kn_ge(a, b);
    }
}
static kn_tensor *select_by(kn_tensor *const *in) {
    return kn_where(cmp_of(in[0], in[1]), kn_mul_scalar(in[0], 2.0), kn_sub(in[1], in[0]));
}
static kn_tensor *mask_times(kn_tensor *const *in) {
    return kn_mul(kn_cast(cmp_of(in[0], kn_scalar(0.5, KN_F32)), KN_F32), in[1]);
}
static kn_tensor *shared_cond(kn_tensor *const *in) {  /* a boolean read twice stays a tensor */
    kn_tensor *c = kn_gt(in[0], in[1]);
    return kn_mul(kn_where(c, in[0], in[1]), kn_cast(c, KN_F32));
}

Test(jit, comparisons_fuse_into_where_and_cast) {
    const float special[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1.0f, 0.5f, -2.0f};
    kn_tensor *x = kn_randn(KN_SHAPE(17, 64), KN_F32), *y = kn_randn(KN_SHAPE(17, 64), KN_F32);
    float *px = kn_data(x), *py = kn_data(y);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) px[i * 8 + j] = special[i], py[i * 8 + j] = special[j];
    py[100] = px[100];  /* equal finite values */
    kn_op ops[] = {KN_OP_eq, KN_OP_ne, KN_OP_lt, KN_OP_le, KN_OP_gt, KN_OP_ge};
    for (int k = 0; k < 6; k++) {
        cmp_op = ops[k];
        check_plan(select_by, (kn_tensor *[]){x, y}, 2, 1, 1, 0);
        check_plan(mask_times, (kn_tensor *[]){x, y}, 2, 1, 1, 0);
    }
    check_plan(shared_cond, (kn_tensor *[]){x, y}, 2, 4, 0, 0);
}

/* In a train step, relu's gradient where(relu(x) > 0, g, 0) is one kernel,
 * and the forward linear takes the relu as its epilogue. */
Test(jit, relu_gradient_is_one_kernel) {
    kn_manual_seed(1);
    trainer t = {kn_sequential_new(kn_linear_new(12, 16, true), kn_relu_new(), kn_linear_new(16, 3, true), NULL),
                 NULL, {NULL}};
    kn_parameters(t.model, t.p, NULL, 4);
    t.opt = kn_sgd_new(t.p, 4, 0.1, 0, 0, false);
    kn_tensor *xy[2] = {kn_randn(KN_SHAPE(8, 12), KN_F32), TI64(KN_SHAPE(8), 0, 1, 2, 0, 1, 2, 0, 1)};
    kn_fn *f = kn_function("step", train_step, &t, 2, 1, NULL);
    kn_tensor *loss;
    cr_assert_eq(kn_call(f, xy, &loss), 0, "%s", kn_last_error());
    char *text = dump_of(f, kn_fn_dump);
    cr_assert(strstr(text, "last where>") && strstr(text, "linear_relu("), "%s", text);
    free(text);
    kn_fn_free(f);
    kn_optim_free(t.opt);
    kn_module_free(t.model);
}

/* Rows shorter than a vector (masked vector loops) and around its width. */
Test(jit, short_rows_agree_with_eager) {
    int64_t lens[] = {1, 3, 10, 15, 16, 17, 33};
    for (int k = 0; k < 7; k++) {
        kn_tensor *x = kn_randn(KN_SHAPE(9, lens[k]), KN_F32), *y = kn_rand(KN_SHAPE(9, lens[k]), KN_F32);
        kn_tensor *w = kn_randn(KN_SHAPE(lens[k]), KN_F32), *b = kn_randn(KN_SHAPE(lens[k]), KN_F32);
        check_plan(softmax_consumers, (kn_tensor *[]){x, y}, 2, 1, 1, 1e-6);
        check_plan(log_softmax_last, &x, 1, 1, 1, 1e-6);
        check_plan(layer_norm_affine, (kn_tensor *[]){x, y, w, b}, 4, 1, 1, 1e-5);
        check_plan(max_rows, &x, 1, 1, 1, 0);
        check_plan(centered, &x, 1, 1, 1, 1e-5);
    }
}

/* A momentum update written in place: m = 0.9 m + 0.1 g, then
 * p -= 0.01 m / (|g| + 1). The update's kernel also stores m (an extra
 * output) unless something reads m's storage between its write and the
 * update (peek: a view of m, which is never forwarded). */
typedef struct { kn_tensor *m, *p, *g; bool peek; } momentum;
static int momentum_step(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    momentum *s = ctx;
    (void)in; /* an input may be a view of m: reading one between would stop the merge */
    if (kn_mul_scalar_(s->m, 0.9) || kn_add_(s->m, kn_mul_scalar(s->g, 0.1))) return -1;
    kn_tensor *seen = s->peek ? kn_sum(kn_reshape(s->m, KN_SHAPE(-1)), KN_ALL_DIMS, false) : NULL;
    if (kn_sub_(s->p, kn_mul_scalar(kn_div(s->m, kn_add_scalar(kn_abs(s->g), 1.0)), 0.01))) return -1;
    out[0] = seen ? seen : kn_sum(s->p, KN_ALL_DIMS, false);
    return out[0] ? 0 : -1;
}

Test(jit, state_updates_are_extra_outputs_of_one_kernel) {
    for (int peek = 0; peek < 2; peek++) {
        kn_tensor *g = kn_randn(KN_SHAPE(33, 70), KN_F32);
        momentum t = {kn_keep(kn_randn(KN_SHAPE(33, 70), KN_F32)), kn_keep(kn_randn(KN_SHAPE(33, 70), KN_F32)), g,
                      peek};
        momentum e = {kn_keep(kn_cast(t.m, KN_F32)), kn_keep(kn_cast(t.p, KN_F32)), g, peek};
        kn_fn *f = kn_function("momentum", momentum_step, &t, 1, 1, NULL);
        for (int call = 0; call < 3; call++) {
            kn_tensor *got, *want;
            kn_tensor *unused = kn_zeros(KN_SHAPE(1), KN_F32);
            cr_assert_eq(kn_call(f, &unused, &got), 0, "%s", kn_last_error());
            cr_assert_eq(momentum_step(&e, &unused, &want), 0);
            assert_close(got, want, 1e-5, 1e-5); /* a sum: its own order */
            assert_equal(t.m, e.m);
            assert_equal(t.p, e.p);
        }
        char *text = dump_of(f, kn_fn_dump);
        cr_assert_eq(strstr(text, "also stores") != NULL, !peek, "%s", text);
        free(text);
        kn_fn_free(f);
        kn_release(t.m), kn_release(t.p), kn_release(e.m), kn_release(e.p);
    }
}

/* Special values through a row kernel agree with eager: a row holding inf
 * or NaN gives NaN rows, as kn_softmax does. */
Test(jit, row_kernels_handle_special_values) {
    kn_tensor *x = kn_randn(KN_SHAPE(5, 40), KN_F32);
    float *p = kn_data(x);
    p[3] = INFINITY;
    p[40 + 7] = NAN;
    for (int i = 0; i < 40; i++) p[80 + i] = -INFINITY;
    p[120] = 3e38f;
    p[121] = 3e38f;
    /* exps around the smallest normal float (x - max near -87.34) and below */
    const float tiny[] = {-87.3365f, -87.3366f, -100.0f, -150.0f, -1e30f};
    for (int i = 0; i < 40; i++) p[160 + i] = i < 5 ? tiny[i] : -0.01f * (float)i;
    check_plan(softmax_last, &x, 1, 1, 1, 1e-6);
    check_plan(log_softmax_last, &x, 1, 1, 1, 1e-6);
    check_plan(max_rows, &x, 1, 1, 1, 0);
}

/* Means divide the double sum by the row length before rounding to f32, as
 * eager does: a row of equal values has its value as mean, so layer_norm
 * gives exactly its bias there (an f32 division gave up to 1e-4). */
static kn_tensor *plain_layer_norm(kn_tensor *const *in) { return kn_layer_norm(in[0], 1, in[1], in[2], 1e-5); }
static kn_tensor *neg_mean(kn_tensor *const *in) { return kn_mean(kn_neg(in[0]), KN_DIMS(1), false); }

Test(jit, row_means_divide_in_double) {
    kn_tensor *x = kn_randn(KN_SHAPE(6, 9), KN_F32), *w = kn_randn(KN_SHAPE(9), KN_F32), *b = kn_randn(KN_SHAPE(9), KN_F32);
    float *p = kn_data(x);
    const float level[3] = {29.941391f, -63.488842f, 1000.3f};  /* f32 sum / 9 missed these by an ulp */
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 9; i++) p[(2 * r) * 9 + i] = level[r];
    check_plan(plain_layer_norm, (kn_tensor *[]){x, w, b}, 3, 1, 1, 1e-5);
    check_plan(neg_mean, &x, 1, 1, 1, 1e-6);
    fn_ctx c[2] = {{plain_layer_norm}, {neg_mean}};
    kn_tensor *in[3] = {x, w, b}, *got[2], *want[2] = {plain_layer_norm(in), neg_mean(in)};
    for (int k = 0; k < 2; k++) {
        kn_fn *f = kn_function("means", run_body, &c[k], k ? 1 : 3, 1, NULL);
        for (int call = 0; call < 2; call++) cr_assert_eq(kn_call(f, in, &got[k]), 0, "%s", kn_last_error());
        kn_fn_free(f);
    }
    const float *g = kn_data(got[0]), *e = kn_data(want[0]), *bv = kn_data(b), *gm = kn_data(got[1]);
    for (int r = 0; r < 3; r++) {
        cr_assert_eq(gm[2 * r], -level[r], "row %d: fused mean %.9g", 2 * r, gm[2 * r]);
        for (int i = 0; i < 9; i++)
            cr_assert(g[2 * r * 9 + i] == bv[i] && e[2 * r * 9 + i] == bv[i],
                      "row %d col %d: fused %.9g, eager %.9g, bias %.9g", 2 * r, i, g[2 * r * 9 + i],
                      e[2 * r * 9 + i], bv[i]);
    }
}

/* One compiled kernel serves every batch size: batch 1 (a new plan, its
 * own signature), 7 and 64 reuse the code compiled for the first. */
Test(jit, symbolic_sizes_share_one_compiled_kernel) {
    fn_ctx c = {softmax_consumers};
    kn_fn *fn = kn_function("sizes", run_body, &c, 2, 1, NULL);
    uint64_t before = kn__jit_compile_count();
    int64_t batches[] = {7, 64, 1, 7, 64};
    for (int i = 0; i < 5; i++) {
        kn_tensor *in[2] = {kn_randn(KN_SHAPE(batches[i], 50), KN_F32), kn_rand(KN_SHAPE(batches[i], 50), KN_F32)};
        kn_tensor *got;
        cr_assert_eq(kn_call(fn, in, &got), 0, "%s", kn_last_error());
        assert_close(got, softmax_consumers(in), 1e-6, 1e-6);
        cr_assert_eq(kn__jit_compile_count(), before + 1, "batch %lld compiled again", (long long)batches[i]);
    }
    cr_assert_eq(kn_fn_stats(fn).traces, 2, "batch 1 has its own signature");
    kn_fn_free(fn);
}

/* Rows are split across threads; each row is one thread's: the result is
 * the same bits whatever the thread count. */
Test(jit, row_kernels_split_across_threads) {
    kn_tensor *x = kn_randn(KN_SHAPE(515, 301), KN_F32), *y = kn_rand(KN_SHAPE(515, 301), KN_F32), *a, *b;
    fn_ctx c = {softmax_consumers};
    kn_fn *fn = kn_function("threads", run_body, &c, 2, 1, NULL);
    cr_assert_eq(kn_call(fn, (kn_tensor *[]){x, y}, &a), 0);  /* the trace runs eagerly */
    kn_set_num_threads(1);
    cr_assert_eq(kn_call(fn, (kn_tensor *[]){x, y}, &a), 0);
    kn_set_num_threads(2);
    cr_assert_eq(kn_call(fn, (kn_tensor *[]){x, y}, &b), 0);
    assert_equal(a, b);
    kn_fn_free(fn);
}

/* A row kernel's loops vectorize, reductions included, and call nothing. */
Test(jit, row_kernel_is_vectorized_without_calls) {
    kn_tensor *x = kn_randn(KN_SHAPE(8, 64), KN_F32), *got;
    fn_ctx c = {softmax_last};
    kn_fn *fn = kn_function("vec", run_body, &c, 1, 1, NULL);
    cr_assert_eq(kn_call(fn, &x, &got), 0);
    char *ir = kn__jit_last_ir();
    cr_assert(ir);
    cr_assert(strstr(ir, "<16 x float>") || strstr(ir, "<8 x float>"), "not vectorized:\n%s", ir);
    /* softmax's max only shifts its exps: the plain vector max */
    cr_assert(strstr(ir, "vector.reduce.fmax") || strstr(ir, "llvm.maxnum.v"), "max not vectorized:\n%s", ir);
    /* rows shorter than a vector run masked vector iterations, not scalar ones */
    cr_assert(strstr(ir, "@llvm.masked.store.v16f32") && strstr(ir, "@llvm.masked.load.v16f32"),
              "no tail-folded loop for short rows:\n%s", ir);
    only_intrinsic_calls(ir);
    free(ir);
    kn_fn_free(fn);
}

/* Row kernels through the IR directly: empty rows reduce to the identity. */
Test(jit, empty_rows_reduce_to_zero) {
    kn_jit_step s[] = {IN(0), {.kind = KN_JIT_ACC, .arg = 0}};
    kn_jit_phase ph[] = {{KN_PHASE_SUM, 0, -1, false, false}, {KN_PHASE_ROW_STORE, 1, 1, false, false}};
    kn_jit_desc d = {.rows = true, .nin = 1, .nout = 1, .inner = {1, 0}, .steps = s, .nsteps = 2,
                     .phases = ph, .nphases = 2};
    kn_jit_kernel k = kn__jit_kernel(&d);
    NOTNULL(k);
    float in[1] = {0}, out[3] = {7, 7, 7};
    int64_t lay[] = {2, 3, 0, 0, 1, 1, 0};  /* domain [3, 0]; the output has one value per row */
    cr_assert_eq(kn__jit_run(k, (void *[]){in, out, lay}, 0, 3), 0);
    for (int i = 0; i < 3; i++) cr_assert_eq(out[i], 0.0f);
}

Test(jit, invalid_row_kernels_give_errors) {
    kn_jit_step s[] = {IN(0), {.kind = KN_JIT_ACC, .arg = 0}, IN(1)};
    kn_jit_phase store_acc[] = {{KN_PHASE_STORE, 1, 1, false, false}};  /* an ACC of a store */
    kn_jit_desc d = {.rows = true, .nin = 1, .nout = 1, .inner = {1, 1}, .steps = s, .nsteps = 2,
                     .phases = store_acc, .nphases = 1};
    EXPECT_ERR(kn__jit_kernel(&d), "not the result of an earlier reduction");
    kn_jit_phase row_reads[] = {{KN_PHASE_ROW_STORE, 0, 1, false, false}};
    d.phases = row_reads;
    EXPECT_ERR(kn__jit_kernel(&d), "a row store reads no elements");
    kn_jit_phase pointwise_sum[] = {{KN_PHASE_SUM, 0, -1, false, false}, {KN_PHASE_STORE, 0, 1, false, false}};
    d.rows = false;
    d.nsteps = 1;
    d.phases = pointwise_sum;
    d.nphases = 2;
    EXPECT_ERR(kn__jit_kernel(&d), "pointwise kernel cannot have phase kind");
    kn_jit_phase into_input[] = {{KN_PHASE_STORE, 0, 0, false, false}};
    d.phases = into_input;
    d.nphases = 1;
    EXPECT_ERR(kn__jit_kernel(&d), "is not an output");
    d.inner[1] = 0;
    kn_jit_phase broadcast_store[] = {{KN_PHASE_STORE, 0, 1, false, false}};
    d.phases = broadcast_store;
    EXPECT_ERR(kn__jit_kernel(&d), "which is not contiguous");
    d.inner[1] = 1;
    d.rows = true;
    d.nsteps = 3;  /* reads the output before anything wrote it */
    kn_jit_phase early[] = {{KN_PHASE_STORE, 2, 1, false, false}};
    d.phases = early;
    EXPECT_ERR(kn__jit_kernel(&d), "reads an output no earlier phase wrote");
    kn_jit_phase sum_shift[] = {{KN_PHASE_SUM, 0, -1, true, false}, {KN_PHASE_STORE, 0, 1, false, false}};
    d.phases = sum_shift;
    d.nphases = 2;
    EXPECT_ERR(kn__jit_kernel(&d), "only a max can be a shift");
    kn_jit_phase max_mean[] = {{KN_PHASE_MAX, 0, -1, false, true}, {KN_PHASE_STORE, 0, 1, false, false}};
    d.phases = max_mean;
    EXPECT_ERR(kn__jit_kernel(&d), "only a sum can be a mean");
}

/* A pointwise kernel writes over an operand that dies at it: the matmul's
 * result is the chain's only input, so a call needs one [256,512] buffer
 * beyond its inputs, not two. */
static kn_tensor *mm_chain(kn_tensor *const *in) {
    return kn_relu(kn_add_scalar(kn_mul_scalar(kn_matmul(in[0], in[1]), 2.0), 1.0));
}

Test(jit, pointwise_kernels_write_over_dying_operands) {
    kn_tensor *x = kn_randn(KN_SHAPE(256, 64), KN_F32), *w = kn_randn(KN_SHAPE(64, 512), KN_F32), *got;
    kn_tensor *want = mm_chain((kn_tensor *[]){x, w});
    fn_ctx c = {mm_chain};
    kn_fn *fn = kn_function("inplace", run_body, &c, 2, 1, NULL);
    cr_assert_eq(kn_call(fn, (kn_tensor *[]){x, w}, &got), 0);  /* the trace */
    kn_release(got);
    int64_t before, peak, buf = 256 * 512 * 4;
    kn_memory_stats(&before, NULL);
    kn_memory_reset_peak();
    cr_assert_eq(kn_call(fn, (kn_tensor *[]){x, w}, &got), 0, "%s", kn_last_error());
    kn_memory_stats(NULL, &peak);
    assert_equal(got, want);
    cr_assert_leq(peak - before, buf + buf / 2, "a call peaked at %lld bytes over %lld", (long long)(peak - before),
                  (long long)before);
    kn_fn_free(fn);
}

/* Strided operands are read in place: a transposed view feeds the kernel
 * with its own strides (a variant compiled at the first call that sees
 * them), in the last dim and in outer dims, in pointwise and row kernels. */
static kn_tensor *transposed_chain(kn_tensor *const *in) {
    return kn_relu(kn_add(kn_mul_scalar(kn_transpose(in[0], 0, 1), 2.0), in[1]));
}
static kn_tensor *transposed_softmax(kn_tensor *const *in) {
    return kn_softmax(kn_mul_scalar(kn_transpose(in[0], 0, 1), 0.5), 1);
}

Test(jit, strided_operands_are_read_in_place) {
    kn_tensor *x = kn_randn(KN_SHAPE(70, 45), KN_F32), *y = kn_randn(KN_SHAPE(45, 70), KN_F32);
    uint64_t first = kn__jit_compile_count();
    check_plan(transposed_chain, (kn_tensor *[]){x, y}, 2, 2, 1, 0);  /* transpose, then the kernel */
    cr_assert_eq(kn__jit_compile_count(), first + 2, "the planned kernel and its strided variant");
    check_plan(transposed_softmax, &x, 1, 2, 1, 1e-6);
    /* an input that is itself a transposed view */
    kn_tensor *xt = kn_transpose(kn_randn(KN_SHAPE(45, 70), KN_F32), 0, 1);
    check_plan(bias_relu, (kn_tensor *[]){xt, kn_randn(KN_SHAPE(70, 45), KN_F32)}, 2, 1, 1, 0);
    uint64_t before = kn__jit_compile_count();
    check_plan(transposed_chain, (kn_tensor *[]){x, y}, 2, 2, 1, 0);  /* variants are cached */
    cr_assert_eq(kn__jit_compile_count(), before);
}

/* An update written back into a captured tensor (an optimizer step) is
 * computed straight into it: views of the tensor see every step, results
 * are eager's bit for bit, and a call allocates nothing for the update. */
typedef struct { kn_tensor *p, *m, *g; } upd_state;
static int update_body(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    upd_state *s = ctx;  /* in[0]: a 0-dim learning rate, read at every call */
    kn_mul_scalar_(s->m, 0.9);
    kn_add_(s->m, kn_mul_scalar(s->g, 0.1));                         /* m = 0.9 m + 0.1 g */
    kn_sub_(s->p, kn_mul(kn_div(s->m, kn_add_scalar(kn_sqrt(kn_abs(s->m)), 1e-3)), in[0]));
    out[0] = kn_sum(s->p, KN_ALL_DIMS, false);
    return 0;
}

Test(jit, updates_are_computed_into_their_targets) {
    kn_manual_seed(3);
    kn_tensor *g = kn_randn(KN_SHAPE(300, 200), KN_F32), *lr = kn_scalar(0.01, KN_F32);
    upd_state e = {kn_randn(KN_SHAPE(300, 200), KN_F32), kn_zeros(KN_SHAPE(300, 200), KN_F32), g};
    upd_state t = {kn_contiguous(e.p), kn_zeros(KN_SHAPE(300, 200), KN_F32), g};
    kn_tensor *row = kn_slice(t.p, 0, 7, 8, 1);  /* a view the caller keeps */
    kn_fn *fn = kn_function("update", update_body, &t, 1, 1, NULL);
    int64_t peak = 0, before = 0;
    for (int step = 0; step < 5; step++) {
        kn_tensor *a, *b;
        cr_assert_eq(update_body(&e, &lr, &a), 0);
        if (step == 3) {
            kn_memory_stats(&before, NULL);
            kn_memory_reset_peak();
        }
        cr_assert_eq(kn_call(fn, &lr, &b), 0, "%s", kn_last_error());
        if (step == 3) kn_memory_stats(NULL, &peak);
        assert_equal(t.p, e.p);
        assert_equal(t.m, e.m);
        assert_equal(row, kn_slice(e.p, 0, 7, 8, 1));
    }
    /* the sum's result and small temporaries; no [300,200] buffer */
    cr_assert_lt(peak - before, 300 * 200 * 4, "a call allocated %lld bytes", (long long)(peak - before));
    kn_fn_free(fn);
}
