/* Upkeep of the JIT's kernel cache on disk (jit/llvm.c): entries of another
 * format or build are recompiled, never run; a read-only cache directory is
 * used without writing to it; stale temporary files and, over the size cap,
 * the least recently used entries are removed when a process opens the cache.
 *
 * Kernels are made through the public API (a kn_function whose body is a
 * chain of f32 elementwise ops) in forked children, because the cache is
 * opened once per process, at the first JIT use: the test process itself
 * never touches the JIT, so every child opens the cache afresh. */
#include "../jit/jit.h"
#include "helpers.h"
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char cache_dir[64];

/* A private empty cache, on even in a run with KN_CACHE=0, and kernels
 * compiled during kn_call whatever the environment says. */
static void cache_setup(void) {
    test_setup(KN_NO_SEED);
    snprintf(cache_dir, sizeof cache_dir, "/tmp/kiln-cache-test-XXXXXX");
    cr_assert(mkdtemp(cache_dir));
    setenv("KN_CACHE_DIR", cache_dir, 1);
    setenv("KN_CACHE", "1", 1);
    setenv("KN_JIT", "1", 1);
    setenv("KN_COMPILE", "sync", 1);
    unsetenv("KN_CACHE_MAX_MB");
    unsetenv("KN_EAGER");
    unsetenv("KN_SHADOW");
}

static void cache_teardown(void) {
    remove_dir(cache_dir);
    test_teardown();
}

TestSuite(jit_cache, .init = cache_setup, .fini = cache_teardown);

/* Two bodies, each one fused kernel: exp(x * 0.5) and tanh(x + 1) * 3. */
static int body_a(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_exp(kn_mul_scalar(in[0], 0.5));
    return out[0] ? 0 : -1;
}
static int body_b(void *ctx, kn_tensor *const *in, kn_tensor **out) {
    (void)ctx;
    out[0] = kn_mul_scalar(kn_tanh(kn_add_scalar(in[0], 1)), 3);
    return out[0] ? 0 : -1;
}
enum { A = 1, B = 2 };

/* In the child: runs each chosen body through kn_call twice (the second
 * call runs the fused kernel) and compares with the eager body bitwise.
 * 1000 elements keep every loop on the calling thread. */
static int child_main(unsigned which) {
    static float v[1000];
    for (int i = 0; i < 1000; i++) v[i] = (float)(i - 500) / 97.0f;
    kn_tensor *x = kn_from_data(v, KN_SHAPE(1000), KN_F32);
    kn_body bodies[2] = {body_a, body_b};
    for (int k = 0; k < 2; k++) {
        if (!(which & (1u << k))) continue;
        kn_fn *f = kn_function(k ? "body_b" : "body_a", bodies[k], NULL, 1, 1, NULL);
        kn_tensor *got = NULL, *want = NULL;
        if (!f || kn_call(f, &x, &got) || kn_call(f, &x, &got) || bodies[k](NULL, &x, &want)) return 101;
        if (memcmp(kn_data(got), kn_data(want), sizeof v)) return 100; /* a wrong kernel ran */
    }
    return (int)(10 * kn__jit_disk_hits() + kn__jit_compile_count());
}

/* Runs child_main(which) in a fresh process with KN_CACHE_MAX_MB=max_mb (if
 * given) and its stderr sent to err (if >= 0). Returns its exit status:
 * 10 * disk hits + LLVM compiles, or 100+ on a failure. */
static int in_child(unsigned which, const char *max_mb, int err) {
    fflush(stderr);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        if (max_mb) setenv("KN_CACHE_MAX_MB", max_mb, 1);
        if (err >= 0) dup2(err, 2);
        _exit(child_main(which));
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st), "the child died (status %d)", st);
    return WEXITSTATUS(st);
}

static void path_of(char *p, size_t n, const char *name) { snprintf(p, n, "%s/%s", cache_dir, name); }

/* Names of the entries (*.kn), sorted, and the count of temporary files. */
static int list_entries(char names[][64], int max, int *ntmp) {
    DIR *d = opendir(cache_dir);
    cr_assert(d);
    int n = 0, t = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (!strncmp(e->d_name, ".tmp-", 5)) t++;
        else if (len > 3 && !strcmp(e->d_name + len - 3, ".kn")) {
            if (n < max) snprintf(names[n], 64, "%s", e->d_name);
            n++;
        }
    }
    closedir(d);
    if (ntmp) *ntmp = t;
    return n;
}

static bool exists(const char *name) {
    char p[256];
    path_of(p, sizeof p, name);
    return access(p, F_OK) == 0;
}

static void set_mtime(const char *name, time_t t) {
    char p[256];
    path_of(p, sizeof p, name);
    struct timespec ts[2] = {{.tv_sec = t}, {.tv_sec = t}};
    cr_assert_eq(utimensat(AT_FDCWD, p, ts, 0), 0, "utimensat %s", p);
}

static time_t mtime_of(const char *name) {
    char p[256];
    path_of(p, sizeof p, name);
    struct stat st;
    cr_assert_eq(stat(p, &st), 0, "%s is gone", name);
    return st.st_mtime;
}

/* A file of size bytes (sparse), last modified at t. */
static void make_file(const char *name, off_t size, time_t t) {
    char p[256];
    path_of(p, sizeof p, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(fd >= 0);
    cr_assert_eq(ftruncate(fd, size), 0);
    close(fd);
    set_mtime(name, t);
}

static size_t read_file(const char *name, unsigned char *buf, size_t max) {
    char p[256];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "rb");
    cr_assert(f, "cannot open %s", p);
    size_t n = fread(buf, 1, max, f);
    fclose(f);
    cr_assert(n > 0 && n < max);
    return n;
}

static void write_file(const char *name, const unsigned char *buf, size_t n) {
    char p[256];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
}

/* The entry of body A (compiled in a child), named into name. */
static void make_entry_a(char name[64]) {
    cr_assert_eq(in_child(A, NULL, -1), 1);
    char names[4][64];
    cr_assert_eq(list_entries(names, 4, NULL), 1);
    memcpy(name, names[0], 64);
}

/* An entry of another file format, another LLVM version in its key, or
 * another kernel's valid entry under this kernel's name: recompiled and
 * rewritten, and the wrong code never runs (the child compares results). */
Test(jit_cache, wrong_version_entries_are_recompiled) {
    char a[64], names[4][64], b[64] = "";
    make_entry_a(a);
    cr_assert_eq(in_child(B, NULL, -1), 1);
    cr_assert_eq(list_entries(names, 4, NULL), 2);
    for (int i = 0; i < 2; i++)
        if (strcmp(names[i], a)) memcpy(b, names[i], 64);
    static unsigned char good[1 << 20], bad[1 << 20], other[1 << 20];
    size_t n = read_file(a, good, sizeof good), nb = read_file(b, other, sizeof other);
    for (int how = 0; how < 3; how++) {
        size_t len = n;
        memcpy(bad, good, n);
        if (how == 0) {
            uint32_t format;
            memcpy(&format, bad + 8, 4); /* after the 8-byte magic */
            format++;
            memcpy(bad + 8, &format, 4);
        } else if (how == 1) {
            unsigned char *llvm = memmem(bad, n, "\nllvm ", 6);
            cr_assert(llvm, "no LLVM version in the key");
            llvm[6] = llvm[6] == '9' ? '8' : (unsigned char)(llvm[6] + 1);
        } else {
            memcpy(bad, other, nb);
            len = nb;
        }
        write_file(a, bad, len);
        cr_assert_eq(in_child(A, NULL, -1), 1, "variant %d was loaded", how);
        cr_assert(read_file(a, bad, sizeof bad) == n && !memcmp(bad, good, n),
                  "variant %d: the entry was not written again", how);
        cr_assert_eq(in_child(A, NULL, -1), 10, "variant %d: the rewritten entry does not load", how);
    }
    cr_assert_eq(in_child(A | B, NULL, -1), 20);
    cr_assert_eq(list_entries(names, 4, NULL), 2);
}

/* Counts lines of text that contain "kiln:". */
static int warnings(FILE *f) {
    char line[1024];
    int n = 0;
    rewind(f);
    while (fgets(line, sizeof line, f)) n += strstr(line, "kiln:") != NULL;
    return n;
}

/* A cache directory the user cannot write (mode 0500; the mode counts even
 * for root): kernels compile and run, entries already there are loaded, and
 * nothing is written, touched or removed; at most one warning. */
Test(jit_cache, read_only_dir_is_used_without_writing) {
    FILE *err = tmpfile();
    cr_assert(err);
    cr_assert_eq(chmod(cache_dir, 0500), 0);
    cr_assert_eq(in_child(A, NULL, fileno(err)), 1);
    cr_assert_leq(warnings(err), 1);
    int ntmp;
    char names[4][64];
    cr_assert_eq(list_entries(names, 4, &ntmp), 0);
    cr_assert_eq(ntmp, 0);

    cr_assert_eq(chmod(cache_dir, 0700), 0);
    char a[64];
    make_entry_a(a);
    time_t old = time(NULL) - 86400;
    set_mtime(a, old);
    cr_assert_eq(chmod(cache_dir, 0500), 0);
    cr_assert_eq(ftruncate(fileno(err), 0), 0);
    cr_assert_eq(in_child(A | B, "0.001", fileno(err)), 11, "A loads, B compiles"); /* cap ignored too */
    cr_assert_leq(warnings(err), 1);
    fclose(err);
    cr_assert_eq(list_entries(names, 4, &ntmp), 1);
    cr_assert_eq(ntmp, 0);
    cr_assert_eq(mtime_of(a), old, "a read-only cache was touched");
}

/* Temporary files older than an hour are left by writers that died; a
 * recent one may belong to a live writer and stays. Entries stay. */
Test(jit_cache, stale_temp_files_are_removed) {
    char a[64];
    make_entry_a(a);
    time_t now = time(NULL);
    make_file(".tmp-4242-1-0123456789abcdef", 3000, now - 2 * 3600);
    make_file(".tmp-4243-7-fedcba9876543210", 3000, now - 60);
    cr_assert_eq(in_child(A, NULL, -1), 10);
    cr_assert(!exists(".tmp-4242-1-0123456789abcdef"), "a stale temporary file stayed");
    cr_assert(exists(".tmp-4243-7-fedcba9876543210"), "a recent temporary file was removed");
    cr_assert(exists(a));
}

/* Ten 100 KiB entries, oldest first, named "<i repeated 32 times>.kn". */
static void make_fillers(time_t oldest) {
    for (int i = 0; i < 10; i++) {
        char name[64];
        memset(name, '0' + i, 32);
        snprintf(name + 32, sizeof name - 32, ".kn");
        make_file(name, 100 << 10, oldest + i);
    }
}

static bool filler_exists(int i) {
    char name[64];
    memset(name, '0' + i, 32);
    snprintf(name + 32, sizeof name - 32, ".kn");
    return exists(name);
}

/* Over the cap (512 KiB here), the least recently used entries go until
 * 80% of the cap is left: of A (oldest) and ten 100 KiB fillers, A and the
 * six oldest fillers. A is then compiled and written again. Under the cap
 * nothing is removed. (A, just written, is newer than the fillers the
 * second time.) */
Test(jit_cache, eviction_under_a_small_cap) {
    char a[64];
    make_entry_a(a);
    time_t now = time(NULL);
    set_mtime(a, now - 2 * 86400);
    make_fillers(now - 86400);
    cr_assert_eq(in_child(B, "2", -1), 1); /* 1 MiB of entries, under a 2 MiB cap */
    cr_assert(exists(a));
    for (int i = 0; i < 10; i++) cr_assert(filler_exists(i), "filler %d removed under the cap", i);

    cr_assert_eq(in_child(A, "0.5", -1), 1, "A was evicted, so it is compiled again");
    cr_assert(exists(a), "A was not written again");
    for (int i = 0; i < 6; i++) cr_assert(!filler_exists(i), "filler %d survived", i);
    for (int i = 6; i < 10; i++) cr_assert(filler_exists(i), "filler %d removed beyond 80%% of the cap", i);

    /* Files added since that upkeep, under the same cap: the next open scans again. */
    make_fillers(now - 86400);
    cr_assert_eq(in_child(A, "0.5", -1), 10);
    for (int i = 0; i < 6; i++) cr_assert(!filler_exists(i), "filler %d survived the second upkeep", i);
    cr_assert(exists(a));
}

/* Loading an entry sets its mtime to now, so an entry in use survives
 * eviction over entries written after it but not used since. */
Test(jit_cache, entry_touched_on_load_survives_eviction) {
    char a[64];
    make_entry_a(a);
    time_t now = time(NULL), old = now - 3 * 86400;
    set_mtime(a, old);
    make_fillers(now - 86400);
    cr_assert_eq(in_child(A, NULL, -1), 10);
    cr_assert_geq(mtime_of(a), now, "a load did not touch the entry");
    cr_assert_eq(in_child(B, "0.5", -1), 1);
    cr_assert(exists(a), "the entry just used was evicted");
    for (int i = 0; i < 6; i++) cr_assert(!filler_exists(i), "filler %d survived", i);
    cr_assert(filler_exists(9));
    cr_assert_eq(in_child(A, NULL, -1), 10);
}
