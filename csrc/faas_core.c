/*
 * faas_core.c - the Slurm-free core of the slurm-faas SPANK plugin: its rules,
 * and the helpers every file of it shares (error messages, strict numbers,
 * comma lists).
 *
 * The core is linked into spank_faas.so (slurmstepd, root) and into the cffi
 * module spank_plugin._faas_core, both built from faas_core.h, the one public
 * header. One file per concern:
 *   core_spec.c    sizes, --faas-share specs and Slurm core lists
 *   core_config.c  plugstack.conf arguments and the site policy
 *   core_spare.c   what a node lends
 *   core_json.c    a buffered writer over a file descriptor, and JSON values
 *   core_files.c   spool directories, atomic file replacement, small files
 *   core_record.c  lend records: write, revoke, peek
 *   core_cgroup.c  the job's cpuset cgroup
 *   core_prolog.c  the job_prolog -> extern step hand-over
 * What they share lies in core_internal.h (not part of the API).
 *
 * Rules for every file of the core:
 *   - C99 + POSIX.1-2008, no Slurm headers, no malloc, no global state
 *     (the Python binding calls in here from several threads without the GIL);
 *   - every failure returns -1 and a one-line message in err; nothing prints;
 *   - files are only ever replaced atomically (temp file, fsync, rename,
 *     fsync of the directory), so a reader never sees half a record.
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void set_err(char *err, unsigned long errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copy [s, s+n) into a NUL-terminated buffer (truncated to fit). Used to quote
 * the offending part of an input in error messages. */
const char *excerpt(char *buf, size_t buflen, const char *s, size_t n)
{
    if (n >= buflen)
        n = buflen - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return buf;
}

/* Strict unsigned decimal: digits only, no sign, no spaces, no overflow past
 * limit. Returns 0 on success, -1 otherwise. */
int parse_udec(const char *s, size_t n, unsigned long long limit, unsigned long long *out)
{
    unsigned long long v = 0;
    size_t i;

    if (n == 0)
        return -1;
    for (i = 0; i < n; i++) {
        unsigned int d;

        if (s[i] < '0' || s[i] > '9')
            return -1;
        d = (unsigned int)(s[i] - '0');
        if (d > limit || v > (limit - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int keyeq(const char *k, size_t klen, const char *name)
{
    return strlen(name) == klen && memcmp(k, name, klen) == 0;
}

void list_start(struct list_cursor *c, const char *text)
{
    c->start = text;
    c->p = text;
    c->end = text + strlen(text);
}

int list_next(struct list_cursor *c, const char **item, size_t *len)
{
    const char *comma;

    if (!c->p)
        return 0;
    if (c->p == c->end && c->p != c->start)
        return -1; /* only a comma leads here */
    comma = memchr(c->p, ',', (size_t)(c->end - c->p));
    *item = c->p;
    *len = (size_t)((comma ? comma : c->end) - c->p);
    c->p = comma ? comma + 1 : NULL;
    return 1;
}
