/* Thread-local error message (promise 5: bad input gets a clear error). */
#include "internal.h"
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char err_msg[1024];
static _Thread_local bool err_set;

bool kn__env(int *cache, const char *name, const char *word) {
    if (*cache < 0) {
        const char *e = getenv(name);
        *cache = e && (word ? strstr(e, word) != NULL : *e && strcmp(e, "0") != 0);
    }
    return *cache;
}

static bool abort_on_error(void) {
    static int cache = -1;
    return kn__env(&cache, "KN_ABORT_ON_ERROR", NULL);
}

void *kn__error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_set = true;
    if (abort_on_error()) {
        fprintf(stderr, "kiln: %s\n", err_msg);
        abort();
    }
    return NULL;
}

void *kn__null_arg(const char *op) {
    if (!err_set) kn__error("%s: argument is NULL", op);
    return NULL;
}

const char *kn_last_error(void) { return err_set ? err_msg : NULL; }

void kn_clear_error(void) {
    err_set = false;
    err_msg[0] = 0;
}

const char *kn__shape_str(const int64_t *shape, int ndim, char *buf) {
    char *p = buf;
    *p++ = '[';
    for (int i = 0; i < ndim; i++)
        p += sprintf(p, i ? ",%lld" : "%lld", (long long)shape[i]);
    strcpy(p, "]");
    return buf;
}
