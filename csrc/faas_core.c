/*
 * faas_core.c - the Slurm-free core of the slurm-faas SPANK plugin.
 *
 * Spec and config parsing, the spare-resource computation and the lend-record
 * files. Linked into spank_faas.so (slurmstepd, root) and into the cffi module
 * spank_plugin._faas_core. Rules for this file:
 *   - C99 + POSIX.1-2008, no Slurm headers, no malloc, no global state
 *     (the Python binding calls in here from several threads without the GIL);
 *   - every failure returns -1 and a one-line message in err; nothing prints;
 *   - files are only ever replaced atomically (temp file, fsync, rename,
 *     fsync of the directory), so a reader never sees half a record.
 */
#define _POSIX_C_SOURCE 200809L

#include "faas_core.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

#define SPOOL_DEFAULT "/var/spool/slurm-faas"
#define CGROUP_ROOT_DEFAULT "/sys/fs/cgroup"
#define SPEC_GRAMMAR "auto, no or cores=N,mem=SIZE[,until=MIN]"

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void set_err(char *err, unsigned long errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, unsigned long errlen, const char *fmt, ...)
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
static const char *excerpt(char *buf, size_t buflen, const char *s, size_t n)
{
    if (n >= buflen)
        n = buflen - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return buf;
}

/* Strict unsigned decimal: digits only, no sign, no spaces, no overflow past
 * limit. Returns 0 on success, -1 otherwise. */
static int parse_udec(const char *s, size_t n, unsigned long long limit, unsigned long long *out)
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

/* ------------------------------------------------------------------------ */
/* sizes                                                                    */
/* ------------------------------------------------------------------------ */

/* Parse the first n bytes of text as a size; see faas_size_parse_mb. */
static int size_parse_n(const char *text, size_t n, unsigned long long *out_mb, char *err,
                        unsigned long errlen)
{
    char q[72];
    size_t digits = 0;
    unsigned long long v, mult_kib;
    const char *unit;
    size_t ulen;

    while (digits < n && text[digits] >= '0' && text[digits] <= '9')
        digits++;
    excerpt(q, sizeof(q), text, n);
    if (digits == 0) {
        set_err(err, errlen, "size must be a positive integer with an optional K, M, G or T suffix, got '%s'",
                q);
        return -1;
    }
    unit = text + digits;
    ulen = n - digits;
    if (ulen > 0 && (unit[0] == '.' || unit[0] == ',')) {
        set_err(err, errlen, "size must be a whole number, got '%s' (use a smaller unit: 1536M, not 1.5G)",
                q);
        return -1;
    }
    /* Sizes are binary units, in KiB internally; a bare number is MiB. */
    if (ulen == 0) {
        mult_kib = 1024ULL;
    } else {
        switch (unit[0]) {
        case 'k':
        case 'K': mult_kib = 1ULL; break;
        case 'm':
        case 'M': mult_kib = 1024ULL; break;
        case 'g':
        case 'G': mult_kib = 1024ULL * 1024ULL; break;
        case 't':
        case 'T': mult_kib = 1024ULL * 1024ULL * 1024ULL; break;
        default: mult_kib = 0; break;
        }
        /* "4G", "4GB" and "4GiB" all mean 4 GiB. */
        if (mult_kib == 0 || !(ulen == 1 || (ulen == 2 && (unit[1] == 'B' || unit[1] == 'b')) ||
                               (ulen == 3 && unit[1] == 'i' && (unit[2] == 'B' || unit[2] == 'b')))) {
            set_err(err, errlen, "bad size suffix in '%s' (expected K, M, G or T)", q);
            return -1;
        }
    }
    if (parse_udec(text, digits, ULLONG_MAX, &v) != 0 || v > ULLONG_MAX / mult_kib) {
        set_err(err, errlen, "size '%s' is too large", q);
        return -1;
    }
    if (v == 0) {
        set_err(err, errlen, "size must be positive, got '%s'", q);
        return -1;
    }
    v *= mult_kib;
    if (v < 1024ULL) {
        set_err(err, errlen, "size '%s' is below the 1 MiB minimum", q);
        return -1;
    }
    /* Whole MiB, rounded down: never lend more than was asked for. */
    *out_mb = v / 1024ULL;
    return 0;
}

int faas_size_parse_mb(const char *text, unsigned long long *out_mb, char *err, unsigned long errlen)
{
    if (!text || !out_mb) {
        set_err(err, errlen, "size is missing");
        return -1;
    }
    return size_parse_n(text, strlen(text), out_mb, err, errlen);
}

/* ------------------------------------------------------------------------ */
/* --faas-share spec                                                        */
/* ------------------------------------------------------------------------ */

static int keyeq(const char *k, size_t klen, const char *name)
{
    return strlen(name) == klen && memcmp(k, name, klen) == 0;
}

int faas_spec_parse(const char *text, struct faas_spec *out, char *err, unsigned long errlen)
{
    struct faas_spec s;
    const char *p, *end;
    int seen_cores = 0, seen_mem = 0, seen_until = 0;
    char q[72], q2[72];

    if (!out) {
        set_err(err, errlen, "no output");
        return -1;
    }
    memset(&s, 0, sizeof(s));
    if (!text || text[0] == '\0' || strcmp(text, "auto") == 0) {
        s.mode = FAAS_SPEC_AUTO;
        *out = s;
        return 0;
    }
    if (strcmp(text, "no") == 0) {
        s.mode = FAAS_SPEC_NO;
        *out = s;
        return 0;
    }

    s.mode = FAAS_SPEC_EXPLICIT;
    p = text;
    end = text + strlen(text);
    for (;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        size_t ilen = (size_t)(item_end - p);
        const char *eq = memchr(p, '=', ilen);
        const char *val;
        size_t klen, vlen;
        unsigned long long v;

        if (ilen == 0) {
            set_err(err, errlen, "empty item in '%s' (expected %s)",
                    excerpt(q, sizeof(q), text, strlen(text)), SPEC_GRAMMAR);
            return -1;
        }
        if (!eq) {
            excerpt(q, sizeof(q), p, ilen);
            if (strcmp(q, "auto") == 0 || strcmp(q, "no") == 0)
                set_err(err, errlen, "'%s' cannot be combined with other keys", q);
            else if (keyeq(p, ilen, "cores") || keyeq(p, ilen, "mem") || keyeq(p, ilen, "until"))
                set_err(err, errlen, "'%s' needs a value (%s=...)", q, q);
            else
                set_err(err, errlen, "'%s' is not key=value (expected %s)", q, SPEC_GRAMMAR);
            return -1;
        }
        klen = (size_t)(eq - p);
        val = eq + 1;
        vlen = (size_t)(item_end - val);
        excerpt(q, sizeof(q), p, klen);
        excerpt(q2, sizeof(q2), val, vlen);

        if (keyeq(p, klen, "cores")) {
            if (seen_cores++) {
                set_err(err, errlen, "duplicate key 'cores'");
                return -1;
            }
            if (parse_udec(val, vlen, UINT_MAX, &v) != 0 || v == 0) {
                set_err(err, errlen, "cores must be a positive integer, got '%s'", q2);
                return -1;
            }
            if (v > FAAS_MAX_CPUS) {
                set_err(err, errlen, "cores must be at most %d, got '%s'", FAAS_MAX_CPUS, q2);
                return -1;
            }
            s.cores = (unsigned int)v;
        } else if (keyeq(p, klen, "mem")) {
            char serr[FAAS_ERR_LEN];

            if (seen_mem++) {
                set_err(err, errlen, "duplicate key 'mem'");
                return -1;
            }
            if (size_parse_n(val, vlen, &s.mem_mb, serr, sizeof(serr)) != 0) {
                set_err(err, errlen, "mem: %s", serr);
                return -1;
            }
        } else if (keyeq(p, klen, "until")) {
            if (seen_until++) {
                set_err(err, errlen, "duplicate key 'until'");
                return -1;
            }
            if (parse_udec(val, vlen, UINT_MAX, &v) != 0 || v == 0) {
                set_err(err, errlen, "until must be a positive number of minutes, got '%s'", q2);
                return -1;
            }
            s.until_min = (unsigned int)v;
        } else {
            set_err(err, errlen, "unknown key '%s' (expected cores, mem or until)", q);
            return -1;
        }

        if (!comma)
            break;
        p = comma + 1;
        if (p == end) {
            set_err(err, errlen, "empty item in '%s' (trailing comma)",
                    excerpt(q, sizeof(q), text, strlen(text)));
            return -1;
        }
    }
    if (!seen_cores && !seen_mem) {
        set_err(err, errlen, "until needs cores=N or mem=SIZE beside it");
        return -1;
    }
    *out = s;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* core lists                                                               */
/* ------------------------------------------------------------------------ */

int faas_cpulist_parse(const char *text, unsigned int *out, unsigned int max, char *err, unsigned long errlen)
{
    /* A bitmap of every possible id, so "3,0-1,1" comes out ascending and
     * unique without sorting or allocating. */
    unsigned char seen[FAAS_MAX_CPUS / 8];
    const char *p, *end;
    unsigned int n = 0, id;
    char q[72];

    if (!text || !out) {
        set_err(err, errlen, "core list is missing");
        return -1;
    }
    if (text[0] == '\0') {
        set_err(err, errlen, "core list is empty");
        return -1;
    }
    memset(seen, 0, sizeof(seen));
    p = text;
    end = text + strlen(text);
    for (;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        size_t ilen = (size_t)(item_end - p);
        const char *dash = memchr(p, '-', ilen);
        unsigned long long lo, hi;

        excerpt(q, sizeof(q), p, ilen);
        if (ilen == 0) {
            set_err(err, errlen, "empty item in core list '%s'", excerpt(q, sizeof(q), text, strlen(text)));
            return -1;
        }
        if (dash) {
            if (parse_udec(p, (size_t)(dash - p), UINT_MAX, &lo) != 0 ||
                parse_udec(dash + 1, (size_t)(item_end - dash - 1), UINT_MAX, &hi) != 0) {
                set_err(err, errlen, "bad core range '%s' (expected N or N-M)", q);
                return -1;
            }
            if (hi < lo) {
                set_err(err, errlen, "reversed core range '%s'", q);
                return -1;
            }
        } else {
            if (parse_udec(p, ilen, UINT_MAX, &lo) != 0) {
                set_err(err, errlen, "bad core id '%s' (expected N or N-M)", q);
                return -1;
            }
            hi = lo;
        }
        if (hi >= FAAS_MAX_CPUS) {
            set_err(err, errlen, "core id in '%s' exceeds the maximum %d", q, FAAS_MAX_CPUS - 1);
            return -1;
        }
        for (id = (unsigned int)lo; id <= (unsigned int)hi; id++)
            seen[id / 8] |= (unsigned char)(1u << (id % 8));
        if (!comma)
            break;
        p = comma + 1;
        if (p == end) {
            set_err(err, errlen, "empty item in core list '%s' (trailing comma)",
                    excerpt(q, sizeof(q), text, strlen(text)));
            return -1;
        }
    }
    for (id = 0; id < FAAS_MAX_CPUS; id++) {
        if (!(seen[id / 8] & (1u << (id % 8))))
            continue;
        if (n >= max) {
            set_err(err, errlen, "core list '%s' has more than %u ids",
                    excerpt(q, sizeof(q), text, strlen(text)), max);
            return -1;
        }
        out[n++] = id;
    }
    if (n > INT_MAX) {
        set_err(err, errlen, "core list too long");
        return -1;
    }
    return (int)n;
}

/* ------------------------------------------------------------------------ */
/* plugstack.conf arguments                                                 */
/* ------------------------------------------------------------------------ */

void faas_config_defaults(struct faas_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "%s", SPOOL_DEFAULT);
    cfg->cpu_map = FAAS_CPU_MAP_IDENTITY;
    cfg->node_cpus = 0;
    cfg->reserve_cores = 0;
    cfg->reserve_mem_mb = 0;
    cfg->auto_mem_percent = 50;
    cfg->default_spec.mode = FAAS_SPEC_NO;
    cfg->max_mem_percent = 100;
    cfg->allow_partitions[0] = '\0';
    cfg->allow_users[0] = '\0';
    snprintf(cfg->cgroup_root, sizeof(cfg->cgroup_root), "%s", CGROUP_ROOT_DEFAULT);
}

/* A comma list of names: non-empty items of [A-Za-z0-9._@+-] only. */
static int name_list_ok(const char *val, const char *key, char *err, unsigned long errlen)
{
    const char *c;
    size_t item = 0;

    if (val[0] == '\0') {
        set_err(err, errlen, "%s needs a comma-separated list of names", key);
        return 0;
    }
    for (c = val;; c++) {
        if (*c == ',' || *c == '\0') {
            if (item == 0) {
                set_err(err, errlen, "%s has an empty item", key);
                return 0;
            }
            item = 0;
            if (*c == '\0')
                return 1;
            continue;
        }
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' ||
              *c == '_' || *c == '-' || *c == '@' || *c == '+')) {
            set_err(err, errlen, "%s: bad character '%c' in a name", key, *c);
            return 0;
        }
        item++;
    }
}

/* Copy an absolute path argument into dst, keeping `reserve` bytes free for
 * what is appended to it later. */
static int set_abs_path(char *dst, size_t cap, size_t reserve, const char *key, const char *val,
                        const char *shown, char *err, unsigned long errlen)
{
    if (val[0] != '/') {
        set_err(err, errlen, "%s must be an absolute path, got '%s'", key, shown);
        return -1;
    }
    if (strlen(val) >= cap - reserve) {
        set_err(err, errlen, "%s path is too long", key);
        return -1;
    }
    snprintf(dst, cap, "%s", val);
    return 0;
}

int faas_config_parse_arg(struct faas_config *cfg, const char *arg, char *err, unsigned long errlen)
{
    const char *eq, *val;
    size_t klen;
    unsigned long long v;
    char q[72];

    if (!cfg || !arg) {
        set_err(err, errlen, "missing argument");
        return -1;
    }
    eq = strchr(arg, '=');
    if (!eq || eq == arg) {
        set_err(err, errlen, "argument '%s' is not key=value", excerpt(q, sizeof(q), arg, strlen(arg)));
        return -1;
    }
    klen = (size_t)(eq - arg);
    val = eq + 1;
    excerpt(q, sizeof(q), val, strlen(val));

    if (keyeq(arg, klen, "spool")) {
        /* leave room for /<node>/<job>.json */
        if (set_abs_path(cfg->spool_dir, sizeof(cfg->spool_dir), 300, "spool", val, q, err, errlen))
            return -1;
    } else if (keyeq(arg, klen, "cpu_map")) {
        if (strcmp(val, "identity") == 0) {
            cfg->cpu_map = FAAS_CPU_MAP_IDENTITY;
        } else if (strcmp(val, "block") == 0) {
            cfg->cpu_map = FAAS_CPU_MAP_BLOCK;
        } else {
            set_err(err, errlen, "cpu_map must be identity or block, got '%s'", q);
            return -1;
        }
    } else if (keyeq(arg, klen, "node_cpus")) {
        if (parse_udec(val, strlen(val), FAAS_MAX_CPUS, &v) != 0) {
            set_err(err, errlen, "node_cpus must be an integer 0..%d, got '%s'", FAAS_MAX_CPUS, q);
            return -1;
        }
        cfg->node_cpus = (unsigned int)v;
    } else if (keyeq(arg, klen, "reserve_cores")) {
        if (parse_udec(val, strlen(val), FAAS_MAX_CPUS, &v) != 0) {
            set_err(err, errlen, "reserve_cores must be an integer 0..%d, got '%s'", FAAS_MAX_CPUS, q);
            return -1;
        }
        cfg->reserve_cores = (unsigned int)v;
    } else if (keyeq(arg, klen, "reserve_mem")) {
        char serr[FAAS_ERR_LEN];

        if (strcmp(val, "0") == 0) {
            cfg->reserve_mem_mb = 0;
        } else if (faas_size_parse_mb(val, &cfg->reserve_mem_mb, serr, sizeof(serr)) != 0) {
            set_err(err, errlen, "reserve_mem: %s", serr);
            return -1;
        }
    } else if (keyeq(arg, klen, "auto_mem_percent")) {
        if (parse_udec(val, strlen(val), 100, &v) != 0 || v == 0) {
            set_err(err, errlen, "auto_mem_percent must be an integer 1..100, got '%s'", q);
            return -1;
        }
        cfg->auto_mem_percent = (unsigned int)v;
    } else if (keyeq(arg, klen, "default")) {
        char serr[FAAS_ERR_LEN];

        if (val[0] == '\0') {
            set_err(err, errlen, "default needs a spec (%s)", SPEC_GRAMMAR);
            return -1;
        }
        if (faas_spec_parse(val, &cfg->default_spec, serr, sizeof(serr)) != 0) {
            set_err(err, errlen, "default: %s", serr);
            return -1;
        }
    } else if (keyeq(arg, klen, "max_mem_percent")) {
        if (parse_udec(val, strlen(val), 100, &v) != 0) {
            set_err(err, errlen, "max_mem_percent must be an integer 0..100, got '%s'", q);
            return -1;
        }
        cfg->max_mem_percent = (unsigned int)v;
    } else if (keyeq(arg, klen, "allow_partitions") || keyeq(arg, klen, "allow_users")) {
        int parts = keyeq(arg, klen, "allow_partitions");
        char *dst = parts ? cfg->allow_partitions : cfg->allow_users;
        size_t cap = parts ? sizeof(cfg->allow_partitions) : sizeof(cfg->allow_users);

        if (!name_list_ok(val, parts ? "allow_partitions" : "allow_users", err, errlen))
            return -1;
        if (strlen(val) >= cap) {
            set_err(err, errlen, "%s is too long", parts ? "allow_partitions" : "allow_users");
            return -1;
        }
        snprintf(dst, cap, "%s", val);
    } else if (keyeq(arg, klen, "cgroup_root")) {
        /* leave room for the job's cgroup path below it */
        if (set_abs_path(cfg->cgroup_root, sizeof(cfg->cgroup_root), 200, "cgroup_root", val, q, err,
                         errlen))
            return -1;
    } else {
        set_err(err, errlen,
                "unknown key '%s' (expected spool, cpu_map, node_cpus, reserve_cores, reserve_mem, "
                "auto_mem_percent, max_mem_percent, allow_partitions, allow_users, cgroup_root or default)",
                excerpt(q, sizeof(q), arg, klen));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* what a node lends                                                        */
/* ------------------------------------------------------------------------ */

int faas_spare_compute(const struct faas_spec *spec, const struct faas_config *cfg,
                       const struct faas_node_alloc *alloc, struct faas_lend *out, char *err,
                       unsigned long errlen)
{
    unsigned int n, lendable, take, i;
    unsigned long long mem_avail;

    if (!spec || !cfg || !alloc || !out) {
        set_err(err, errlen, "missing argument");
        return -1;
    }
    out->ncpus = 0;
    out->mem_mb = 0;
    out->cpu_source = FAAS_CPUS_FROM_MAP;
    n = alloc->ncores;
    if (n > FAAS_MAX_CPUS) {
        set_err(err, errlen, "job holds %u cores, more than the maximum %d", n, FAAS_MAX_CPUS);
        return -1;
    }
    for (i = 1; i < n; i++) {
        if (alloc->cores[i] <= alloc->cores[i - 1]) {
            set_err(err, errlen, "allocated core ids are not ascending (%u after %u)", alloc->cores[i],
                    alloc->cores[i - 1]);
            return -1;
        }
    }
    if (spec->mode == FAAS_SPEC_NO)
        return 0;
    if (spec->mode != FAAS_SPEC_AUTO && spec->mode != FAAS_SPEC_EXPLICIT) {
        set_err(err, errlen, "unknown spec mode %d", spec->mode);
        return -1;
    }

    /* The job keeps its reserve and always at least one core. */
    lendable = n > cfg->reserve_cores ? n - cfg->reserve_cores : 0;
    if (n > 0 && lendable > n - 1)
        lendable = n - 1;
    mem_avail = alloc->mem_mb > cfg->reserve_mem_mb ? alloc->mem_mb - cfg->reserve_mem_mb : 0;

    /*
     * A resource the spec names is lent up to that amount; one it does not
     * name (and every resource under auto) is lent as auto decides: the cores
     * the job's tasks leave idle, and auto_mem_percent of the memory. So
     * cores=2 lends two cores and auto's memory share.
     */
    {
        unsigned int pct = cfg->auto_mem_percent > 100 ? 100 : cfg->auto_mem_percent;
        unsigned int idle = n > alloc->used_cores ? n - alloc->used_cores : 0;
        unsigned int auto_cores = idle > cfg->reserve_cores ? idle - cfg->reserve_cores : 0;
        /* mem_avail * pct / 100 without overflowing 64 bits */
        unsigned long long auto_mem = (mem_avail / 100) * pct + (mem_avail % 100) * pct / 100;
        int explicit_spec = spec->mode == FAAS_SPEC_EXPLICIT;

        take = explicit_spec && spec->cores ? spec->cores : auto_cores;
        if (take > lendable)
            take = lendable;
        unsigned int maxpct = cfg->max_mem_percent > 100 ? 100 : cfg->max_mem_percent;
        unsigned long long mem_cap = (alloc->mem_mb / 100) * maxpct + (alloc->mem_mb % 100) * maxpct / 100;

        out->mem_mb = explicit_spec && spec->mem_mb ? spec->mem_mb : auto_mem;
        if (out->mem_mb > mem_avail)
            out->mem_mb = mem_avail;
        if (out->mem_mb > mem_cap)
            out->mem_mb = mem_cap;
    }

    /*
     * A job confined by task/cgroup (or task/affinity with a cpuset) names
     * its OS CPUs: the k-th allocated core is the k-th group of
     * nos_cpus / n CPUs of its cpuset (threads of one core are adjacent in
     * the job's sorted cpuset on every layout Slurm builds). A cpuset that
     * is not a whole multiple of the cores is not understood: lend nothing.
     */
    out->cpu_source = FAAS_CPUS_FROM_MAP;
    if (take > 0 && alloc->nos_cpus > 0) {
        unsigned int per_core;

        if (alloc->nos_cpus > FAAS_MAX_CPUS || alloc->nos_cpus % n != 0) {
            set_err(err, errlen, "the job's cpuset has %u CPUs for %u allocated cores", alloc->nos_cpus, n);
            out->mem_mb = 0;
            return -1;
        }
        per_core = alloc->nos_cpus / n;
        for (i = 0; i < take; i++) {
            out->slurm_cpus[i] = alloc->cores[n - take + i];
            out->os_cpus[i] = alloc->os_cpus[(n - take + i) * per_core];
        }
        out->ncpus = take;
        out->cpu_source = FAAS_CPUS_FROM_CGROUP;
        return 0;
    }

    if (take > 0 && cfg->cpu_map == FAAS_CPU_MAP_BLOCK && (cfg->node_cpus == 0 || alloc->online_cpus == 0)) {
        set_err(err, errlen,
                "cpu_map=block needs node_cpus=N in plugstack.conf and a known online CPU count");
        out->mem_mb = 0;
        return -1;
    }
    /* The job keeps its low cores; the highest-numbered ones are lent. */
    for (i = 0; i < take; i++) {
        unsigned int id = alloc->cores[n - take + i];

        out->slurm_cpus[i] = id;
        if (cfg->cpu_map == FAAS_CPU_MAP_BLOCK) {
            /*
             * Block map: node_cpus declared cores share online_cpus real
             * CPUs in contiguous blocks. The dev cluster declares CPUs=8 per
             * node on a 2-CPU machine (SlurmdParameters=config_overrides),
             * so declared cores 0-3 share OS CPU 0 and 4-7 share OS CPU 1:
             * pinning a function to the OS CPU of its lent core stays real.
             */
            if (id >= cfg->node_cpus) {
                set_err(err, errlen, "core id %u is beyond node_cpus=%u", id, cfg->node_cpus);
                out->ncpus = 0;
                out->mem_mb = 0;
                return -1;
            }
            out->os_cpus[i] = (unsigned int)((unsigned long long)id * alloc->online_cpus / cfg->node_cpus);
        } else {
            out->os_cpus[i] = id;
        }
    }
    out->ncpus = take;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* lend records                                                             */
/* ------------------------------------------------------------------------ */

/* Refuse anything that could leave <spool>/<node>/: empty, '/', "..",
 * control characters, over-long. */
static int node_name_ok(const char *node, char *err, unsigned long errlen)
{
    const unsigned char *c;

    if (!node || node[0] == '\0') {
        set_err(err, errlen, "node name is empty");
        errno = EINVAL;
        return 0;
    }
    if (strlen(node) >= 256 || strchr(node, '/') || strstr(node, "..") || strcmp(node, ".") == 0) {
        set_err(err, errlen, "bad node name '%.64s' (no '/', no '..')", node);
        errno = EINVAL;
        return 0;
    }
    for (c = (const unsigned char *)node; *c; c++) {
        if (*c < 0x20 || *c == 0x7f) {
            set_err(err, errlen, "bad node name (control character)");
            errno = EINVAL;
            return 0;
        }
    }
    return 1;
}

/* A small write buffer over a file descriptor; the first error sticks. */
struct wbuf {
    int fd;
    int err; /* errno of the first failure, 0 if none */
    size_t len;
    char buf[4096];
};

static void wb_flush(struct wbuf *w)
{
    size_t off = 0;

    while (!w->err && off < w->len) {
        ssize_t r = write(w->fd, w->buf + off, w->len - off);

        if (r < 0) {
            if (errno == EINTR)
                continue;
            w->err = errno;
        } else {
            off += (size_t)r;
        }
    }
    w->len = 0;
}

static void wb_put(struct wbuf *w, const char *s, size_t n)
{
    while (n > 0 && !w->err) {
        size_t room = sizeof(w->buf) - w->len;
        size_t k = n < room ? n : room;

        memcpy(w->buf + w->len, s, k);
        w->len += k;
        s += k;
        n -= k;
        if (w->len == sizeof(w->buf))
            wb_flush(w);
    }
}

static void wb_str(struct wbuf *w, const char *s)
{
    wb_put(w, s, strlen(s));
}

static void wb_fmt(struct wbuf *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void wb_fmt(struct wbuf *w, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (r > 0)
        wb_put(w, tmp, (size_t)r < sizeof(tmp) ? (size_t)r : sizeof(tmp) - 1);
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s)
{
    size_t n, i;
    unsigned int cp;

    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) {
        n = 2;
        cp = s[0] & 0x1f;
    } else if ((s[0] & 0xf0) == 0xe0) {
        n = 3;
        cp = s[0] & 0x0f;
    } else if ((s[0] & 0xf8) == 0xf0) {
        n = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* A JSON string: quotes, backslashes and control characters escaped,
 * invalid UTF-8 replaced by U+FFFD. */
static void wb_json_str(struct wbuf *w, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    wb_put(w, "\"", 1);
    while (*p) {
        size_t n;

        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};

            wb_put(w, e, 2);
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            wb_fmt(w, "\\u%04x", *p);
            p++;
        } else if ((n = utf8_seq(p)) == 0) {
            wb_str(w, "\\ufffd");
            p++;
        } else {
            wb_put(w, (const char *)p, n);
            p += n;
        }
    }
    wb_put(w, "\"", 1);
}

static void wb_uint_array(struct wbuf *w, const unsigned int *a, unsigned int n)
{
    unsigned int i;

    wb_put(w, "[", 1);
    for (i = 0; i < n; i++)
        wb_fmt(w, i ? ",%u" : "%u", a[i]);
    wb_put(w, "]", 1);
}

/* Open <spool>/<node> as a directory fd, creating <node> (0755) if needed.
 * The spool itself must exist. Returns the fd, -1 on error (message set),
 * or -2 when create is 0 and something is missing (ENOENT). */
static int open_node_dir(const char *spool_dir, const char *node, int create, char *err, unsigned long errlen)
{
    int sfd, dfd;

    if (!spool_dir || spool_dir[0] == '\0') {
        set_err(err, errlen, "spool directory is not set");
        errno = EINVAL;
        return -1;
    }
    if (!node_name_ok(node, err, errlen))
        return -1;
    sfd = open(spool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sfd < 0) {
        int e = errno;

        if (e == ENOENT && !create)
            return -2;
        set_err(err, errlen, "cannot open spool directory %s: %s", spool_dir, strerror(e));
        errno = e;
        return -1;
    }
    if (create && mkdirat(sfd, node, 0755) == 0) {
        /* exact mode whatever the umask */
        if (fchmodat(sfd, node, 0755, 0) != 0) {
            int e = errno;

            close(sfd);
            set_err(err, errlen, "cannot chmod %s/%s: %s", spool_dir, node, strerror(e));
            errno = e;
            return -1;
        }
    } else if (create && errno != EEXIST) {
        int e = errno;

        close(sfd);
        set_err(err, errlen, "cannot create %s/%s: %s", spool_dir, node, strerror(e));
        errno = e;
        return -1;
    }
    dfd = openat(sfd, node, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        int e = errno;

        close(sfd);
        if (e == ENOENT && !create)
            return -2;
        set_err(err, errlen, "cannot open %s/%s: %s", spool_dir, node, strerror(e));
        errno = e;
        return -1;
    }
    close(sfd);
    return dfd;
}

/* Create a fresh temp file beside the record, ".<job>.json.<pid>.<ns>.tmp"
 * (dot files are ignored by readers of the spool). O_EXCL with a new name on
 * a clash, so concurrent writers, even threads of one process, never share
 * a temp file. */
static int open_temp(int dfd, unsigned int job_id, char *tmpname, size_t tmplen)
{
    struct timespec ts;
    int fd = -1, attempt;

    for (attempt = 0; attempt < 16; attempt++) {
        if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
            ts.tv_nsec = 0;
        snprintf(tmpname, tmplen, ".%u.json.%ld.%ld%02d.tmp", job_id, (long)getpid(), (long)ts.tv_nsec,
                 attempt);
        fd = openat(dfd, tmpname, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST)
            break;
    }
    if (fd >= 0 && fchmod(fd, 0644) != 0) {
        int e = errno;

        close(fd);
        (void)unlinkat(dfd, tmpname, 0);
        errno = e;
        return -1;
    }
    return fd;
}

/* Flush, fsync and close the temp file, rename it over final, fsync the
 * directory. Removes the temp file on failure. Returns 0 or -1 (errno in
 * *eout, the failing step in *what). */
static int commit_temp_mode(int dfd, struct wbuf *w, const char *tmpname, const char *final, int *eout,
                            const char **what, int no_replace);

static int commit_temp(int dfd, struct wbuf *w, const char *tmpname, const char *final, int *eout,
                       const char **what)
{
    return commit_temp_mode(dfd, w, tmpname, final, eout, what, 0);
}

/* no_replace: link(2) instead of rename(2), so an existing final file wins
 * (EEXIST) and is never replaced: the first of two writers keeps its record. */
static int commit_temp_mode(int dfd, struct wbuf *w, const char *tmpname, const char *final, int *eout,
                            const char **what, int no_replace)
{
    wb_flush(w);
    if (w->err) {
        *eout = w->err;
        *what = "write";
    } else if (fsync(w->fd) != 0) {
        *eout = errno;
        *what = "fsync";
    } else {
        *eout = 0;
    }
    if (close(w->fd) != 0 && *eout == 0) {
        *eout = errno;
        *what = "close";
    }
    if (*eout == 0 && no_replace) {
        if (linkat(dfd, tmpname, dfd, final, 0) != 0) {
            *eout = errno;
            *what = "link";
        }
        (void)unlinkat(dfd, tmpname, 0);
    } else if (*eout == 0 && renameat(dfd, tmpname, dfd, final) != 0) {
        *eout = errno;
        *what = "rename";
    }
    if (*eout != 0) {
        (void)unlinkat(dfd, tmpname, 0);
        return -1;
    }
    if (fsync(dfd) != 0) {
        *eout = errno;
        *what = "fsync of the directory";
        return -1;
    }
    return 0;
}

static int record_write(const char *spool_dir, const struct faas_lend_meta *meta, const struct faas_lend *lend,
                        const char *state, int no_replace, char *err, unsigned long errlen);

int faas_lend_record_write(const char *spool_dir, const struct faas_lend_meta *meta,
                           const struct faas_lend *lend, const char *state, char *err, unsigned long errlen)
{
    return record_write(spool_dir, meta, lend, state, 0, err, errlen);
}

int faas_lend_record_create(const char *spool_dir, const struct faas_lend_meta *meta,
                            const struct faas_lend *lend, char *err, unsigned long errlen)
{
    int rc = record_write(spool_dir, meta, lend, "lent", 1, err, errlen);

    return rc < 0 && errno == EEXIST ? 1 : rc;
}

static int record_write(const char *spool_dir, const struct faas_lend_meta *meta, const struct faas_lend *lend,
                        const char *state, int no_replace, char *err, unsigned long errlen)
{
    char tmpname[64], final[32];
    struct wbuf w;
    int dfd, e;
    const char *what = "";
    int revoked;

    if (!meta || !lend || !state) {
        set_err(err, errlen, "missing argument");
        errno = EINVAL;
        return -1;
    }
    if (strcmp(state, "lent") != 0 && strcmp(state, "revoked") != 0) {
        set_err(err, errlen, "state must be 'lent' or 'revoked', got '%.32s'", state);
        errno = EINVAL;
        return -1;
    }
    if (lend->ncpus > FAAS_MAX_CPUS) {
        set_err(err, errlen, "lend has %u cpus, more than the maximum %d", lend->ncpus, FAAS_MAX_CPUS);
        errno = EINVAL;
        return -1;
    }
    if (memchr(meta->node, '\0', sizeof(meta->node)) == NULL ||
        memchr(meta->spec, '\0', sizeof(meta->spec)) == NULL) {
        set_err(err, errlen, "node or spec is not NUL-terminated");
        errno = EINVAL;
        return -1;
    }
    revoked = strcmp(state, "revoked") == 0;
    dfd = open_node_dir(spool_dir, meta->node, 1, err, errlen);
    if (dfd < 0)
        return -1;
    snprintf(final, sizeof(final), "%u.json", meta->job_id);
    w.fd = open_temp(dfd, meta->job_id, tmpname, sizeof(tmpname));
    if (w.fd < 0) {
        e = errno;
        close(dfd);
        set_err(err, errlen, "cannot create a temp file in %s/%s: %s", spool_dir, meta->node, strerror(e));
        errno = e;
        return -1;
    }
    w.err = 0;
    w.len = 0;

    wb_fmt(&w, "{\"version\":%d,\"state\":", FAAS_LEND_RECORD_VERSION);
    wb_json_str(&w, state);
    wb_fmt(&w, ",\"job_id\":%u,\"node\":", meta->job_id);
    wb_json_str(&w, meta->node);
    wb_fmt(&w, ",\"uid\":%u,\"gid\":%u,\"slurm_cpus\":", meta->uid, meta->gid);
    wb_uint_array(&w, lend->slurm_cpus, lend->ncpus);
    wb_str(&w, ",\"os_cpus\":");
    wb_uint_array(&w, lend->os_cpus, lend->ncpus);
    wb_fmt(&w, ",\"mem_mb\":%llu,\"end_time\":%lld,\"until_min\":%u,\"spec\":", lend->mem_mb, meta->end_time,
           meta->until_min);
    wb_json_str(&w, meta->spec);
    wb_fmt(&w, ",\"written_at\":%lld", (long long)time(NULL));
    if (revoked)
        wb_fmt(&w, ",\"revoked_at\":%lld", (long long)time(NULL));
    wb_str(&w, "}\n");

    if (commit_temp_mode(dfd, &w, tmpname, final, &e, &what, no_replace) != 0) {
        close(dfd);
        set_err(err, errlen, "cannot write %s/%s/%s (%s): %s", spool_dir, meta->node, final, what,
                strerror(e));
        errno = e;
        return -1;
    }
    close(dfd);
    return 0;
}

int faas_lend_record_revoke(const char *spool_dir, const char *node, unsigned int job_id, char *err,
                            unsigned long errlen)
{
    static const char lent_prefix[] = "{\"version\":1,\"state\":\"lent\",";
    static const char revoked_prefix[] = "{\"version\":1,\"state\":\"revoked\",";
    char tmpname[64], final[32], buf[4096];
    struct wbuf w;
    struct stat st;
    int dfd, rfd, e;
    off_t body_end, off;
    const char *what = "";
    ssize_t r;

    dfd = open_node_dir(spool_dir, node, 0, err, errlen);
    if (dfd == -2)
        return 1;
    if (dfd < 0)
        return -1;
    snprintf(final, sizeof(final), "%u.json", job_id);
    rfd = openat(dfd, final, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (rfd < 0) {
        e = errno;
        close(dfd);
        if (e == ENOENT)
            return 1;
        set_err(err, errlen, "cannot open %s/%s/%s: %s", spool_dir, node, final, strerror(e));
        errno = e;
        return -1;
    }
    /*
     * The record is ours: it starts with lent_prefix and ends with "}\n".
     * Stream it into the temp file with the state swapped and revoked_at
     * added before the closing brace; no need to hold it in memory.
     */
    r = pread(rfd, buf, sizeof(revoked_prefix) - 1, 0);
    if (r >= (ssize_t)sizeof(revoked_prefix) - 1 &&
        memcmp(buf, revoked_prefix, sizeof(revoked_prefix) - 1) == 0) {
        close(rfd);
        close(dfd);
        return 0; /* already revoked: keep the first revoked_at */
    }
    if (fstat(rfd, &st) != 0 || r < (ssize_t)sizeof(lent_prefix) - 1 ||
        memcmp(buf, lent_prefix, sizeof(lent_prefix) - 1) != 0) {
        close(rfd);
        close(dfd);
        set_err(err, errlen, "%s/%s/%s is not a version 1 lend record", spool_dir, node, final);
        errno = EINVAL;
        return -1;
    }
    body_end = st.st_size;
    for (;;) {
        char c;

        if (body_end <= (off_t)sizeof(lent_prefix) || pread(rfd, &c, 1, body_end - 1) != 1) {
            body_end = -1;
            break;
        }
        if (c == '}') {
            body_end--;
            break;
        }
        if (c != '\n' && c != ' ' && c != '\r' && c != '\t') {
            body_end = -1;
            break;
        }
        body_end--;
    }
    if (body_end < 0) {
        close(rfd);
        close(dfd);
        set_err(err, errlen, "%s/%s/%s is truncated", spool_dir, node, final);
        errno = EINVAL;
        return -1;
    }

    w.fd = open_temp(dfd, job_id, tmpname, sizeof(tmpname));
    if (w.fd < 0) {
        e = errno;
        close(rfd);
        close(dfd);
        set_err(err, errlen, "cannot create a temp file in %s/%s: %s", spool_dir, node, strerror(e));
        errno = e;
        return -1;
    }
    w.err = 0;
    w.len = 0;
    wb_str(&w, revoked_prefix);
    off = (off_t)sizeof(lent_prefix) - 1;
    while (off < body_end && !w.err) {
        size_t want = (size_t)(body_end - off) < sizeof(buf) ? (size_t)(body_end - off) : sizeof(buf);

        r = pread(rfd, buf, want, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            w.err = r < 0 ? errno : EIO;
            break;
        }
        wb_put(&w, buf, (size_t)r);
        off += r;
    }
    close(rfd);
    wb_fmt(&w, ",\"revoked_at\":%lld}\n", (long long)time(NULL));
    if (commit_temp(dfd, &w, tmpname, final, &e, &what) != 0) {
        close(dfd);
        set_err(err, errlen, "cannot rewrite %s/%s/%s (%s): %s", spool_dir, node, final, what, strerror(e));
        errno = e;
        return -1;
    }
    close(dfd);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* the job's cpuset cgroup                                                  */
/* ------------------------------------------------------------------------ */

/* Read a small text file whole (at most buflen - 1 bytes, NUL-terminated,
 * trailing whitespace removed). Returns 0, 1 when it does not exist, -1 on
 * error (errno set). */
static int read_small_file(const char *path, char *buf, size_t buflen)
{
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? 1 : -1;
    for (;;) {
        ssize_t r;

        if (len + 1 >= buflen) {
            close(fd);
            errno = EFBIG;
            return -1;
        }
        r = read(fd, buf + len, buflen - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;

            close(fd);
            errno = e;
            return -1;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        len--;
    buf[len] = '\0';
    return 0;
}

int faas_cgroup_job_cpus(const char *root, const char *node, unsigned int uid, unsigned int job_id,
                         unsigned int *out, unsigned int max, int *version, char *err, unsigned long errlen)
{
    /* cpuset.cpus of 4096 CPUs written as single ids fits in 24 KiB. */
    char path[1024], text[24576], perr[FAAS_ERR_LEN];
    int have_node = node && node[0] != '\0';
    int k;

    if (version)
        *version = FAAS_CGROUP_NONE;
    if (!root || root[0] != '/' || !out) {
        set_err(err, errlen, "cgroup root must be an absolute path");
        return -1;
    }
    if (have_node && !node_name_ok(node, err, errlen))
        return -1;
    for (k = 0; k < 4; k++) {
        int r, n, ver = k < 2 ? FAAS_CGROUP_V2 : FAAS_CGROUP_V1;

        /* Multiple slurmd on one host (slurmd -N) name their cgroups by node. */
        if ((k == 0 || k == 2) && !have_node)
            continue;
        if (k == 0)
            r = snprintf(path, sizeof(path), "%s/system.slice/%s_slurmstepd.scope/job_%u/cpuset.cpus.effective",
                         root, node, job_id);
        else if (k == 1)
            r = snprintf(path, sizeof(path), "%s/system.slice/slurmstepd.scope/job_%u/cpuset.cpus.effective", root,
                         job_id);
        else if (k == 2)
            r = snprintf(path, sizeof(path), "%s/cpuset/slurm_%s/uid_%u/job_%u/cpuset.cpus", root, node, uid,
                         job_id);
        else
            r = snprintf(path, sizeof(path), "%s/cpuset/slurm/uid_%u/job_%u/cpuset.cpus", root, uid, job_id);
        if (r < 0 || (size_t)r >= sizeof(path)) {
            set_err(err, errlen, "cgroup path is too long");
            return -1;
        }
        r = read_small_file(path, text, sizeof(text));
        if (r == 1)
            continue;
        if (r < 0) {
            set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
            return -1;
        }
        n = faas_cpulist_parse(text, out, max, perr, sizeof(perr));
        if (n <= 0) {
            set_err(err, errlen, "%s: %s", path, n < 0 ? perr : "empty cpuset");
            return -1;
        }
        if (version)
            *version = ver;
        return n;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* site policy                                                              */
/* ------------------------------------------------------------------------ */

static int in_name_list(const char *list, const char *name)
{
    size_t nlen;
    const char *p = list;

    if (!name || name[0] == '\0')
        return 0;
    nlen = strlen(name);
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t ilen = comma ? (size_t)(comma - p) : strlen(p);

        if (ilen == nlen && memcmp(p, name, nlen) == 0)
            return 1;
        if (!comma)
            break;
        p = comma + 1;
    }
    return 0;
}

int faas_policy_allows(const struct faas_config *cfg, const char *partition, const char *user, char *err,
                       unsigned long errlen)
{
    if (!cfg) {
        set_err(err, errlen, "missing argument");
        return 0;
    }
    if (cfg->allow_partitions[0] != '\0' && !in_name_list(cfg->allow_partitions, partition)) {
        set_err(err, errlen, "partition '%.64s' may not lend (allow_partitions=%.128s)",
                partition ? partition : "", cfg->allow_partitions);
        return 0;
    }
    if (cfg->allow_users[0] != '\0' && !in_name_list(cfg->allow_users, user)) {
        set_err(err, errlen, "user '%.64s' may not lend (allow_users=%.128s)", user ? user : "",
                cfg->allow_users);
        return 0;
    }
    return 1;
}

unsigned int faas_tasks_estimate(const char *ntasks, const char *nnodes)
{
    unsigned long long t, n;

    if (!ntasks || !nnodes || parse_udec(ntasks, strlen(ntasks), 1000000000ULL, &t) != 0 ||
        parse_udec(nnodes, strlen(nnodes), 1000000000ULL, &n) != 0 || t == 0 || n == 0)
        return 0;
    t = (t + n - 1) / n;
    return t > FAAS_MAX_CPUS ? FAAS_MAX_CPUS : (unsigned int)t;
}

/* ------------------------------------------------------------------------ */
/* job_prolog -> extern step hand-over                                      */
/* ------------------------------------------------------------------------ */

#define PENDING_MAGIC "faas-pending 1 "

int faas_pending_write(const char *spool_dir, const char *node, unsigned int job_id,
                       const struct faas_pending *p, char *err, unsigned long errlen)
{
    char tmpname[64], final[40];
    struct wbuf w;
    const char *what = "", *c;
    int dfd, e;

    if (!p || memchr(p->spec, '\0', sizeof(p->spec)) == NULL) {
        set_err(err, errlen, "missing or unterminated hand-over");
        errno = EINVAL;
        return -1;
    }
    for (c = p->spec; *c; c++) {
        if (*c <= ' ' || *c == 0x7f) {
            set_err(err, errlen, "spec contains blanks or control characters");
            errno = EINVAL;
            return -1;
        }
    }
    dfd = open_node_dir(spool_dir, node, 1, err, errlen);
    if (dfd < 0)
        return -1;
    snprintf(final, sizeof(final), ".%u.pending", job_id);
    w.fd = open_temp(dfd, job_id, tmpname, sizeof(tmpname));
    if (w.fd < 0) {
        e = errno;
        close(dfd);
        set_err(err, errlen, "cannot create a temp file in %s/%s: %s", spool_dir, node, strerror(e));
        errno = e;
        return -1;
    }
    w.err = 0;
    w.len = 0;
    wb_str(&w, PENDING_MAGIC);
    wb_fmt(&w, "given=%d tasks=%u spec=", p->given ? 1 : 0, p->tasks_on_node);
    wb_str(&w, p->spec);
    wb_str(&w, "\n");
    if (commit_temp(dfd, &w, tmpname, final, &e, &what) != 0) {
        close(dfd);
        set_err(err, errlen, "cannot write %s/%s/%s (%s): %s", spool_dir, node, final, what, strerror(e));
        errno = e;
        return -1;
    }
    close(dfd);
    return 0;
}

int faas_pending_read(const char *spool_dir, const char *node, unsigned int job_id, struct faas_pending *p,
                      char *err, unsigned long errlen)
{
    char path[1400], text[512];
    const char *q;
    unsigned long long given, tasks;
    size_t n;
    int r;

    if (!p || !spool_dir || !node_name_ok(node, err, errlen)) {
        if (!p || !spool_dir)
            set_err(err, errlen, "missing argument");
        return -1;
    }
    memset(p, 0, sizeof(*p));
    r = snprintf(path, sizeof(path), "%s/%s/.%u.pending", spool_dir, node, job_id);
    if (r < 0 || (size_t)r >= sizeof(path)) {
        set_err(err, errlen, "spool path is too long");
        return -1;
    }
    r = read_small_file(path, text, sizeof(text));
    if (r == 1)
        return 1;
    if (r < 0) {
        set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    /* faas-pending 1 given=G tasks=T spec=S */
    q = text;
    if (strncmp(q, PENDING_MAGIC "given=", sizeof(PENDING_MAGIC "given=") - 1) != 0)
        goto bad;
    q += sizeof(PENDING_MAGIC "given=") - 1;
    if (parse_udec(q, 1, 1, &given) != 0 || strncmp(q + 1, " tasks=", 7) != 0)
        goto bad;
    q += 8;
    for (n = 0; q[n] >= '0' && q[n] <= '9'; n++)
        ;
    if (parse_udec(q, n, FAAS_MAX_CPUS, &tasks) != 0 || strncmp(q + n, " spec=", 6) != 0)
        goto bad;
    q += n + 6;
    if (strlen(q) >= sizeof(p->spec) || strchr(q, ' ') || strchr(q, '\n'))
        goto bad;
    p->given = (int)given;
    p->tasks_on_node = (unsigned int)tasks;
    snprintf(p->spec, sizeof(p->spec), "%s", q);
    return 0;
bad:
    set_err(err, errlen, "%s is not a slurm-faas hand-over file", path);
    errno = EINVAL;
    return -1;
}

int faas_pending_remove(const char *spool_dir, const char *node, unsigned int job_id, char *err,
                        unsigned long errlen)
{
    char name[40];
    int dfd = open_node_dir(spool_dir, node, 0, err, errlen);

    if (dfd == -2)
        return 1;
    if (dfd < 0)
        return -1;
    snprintf(name, sizeof(name), ".%u.pending", job_id);
    if (unlinkat(dfd, name, 0) != 0) {
        int e = errno;

        close(dfd);
        if (e == ENOENT)
            return 1;
        set_err(err, errlen, "cannot remove %s/%s/%s: %s", spool_dir, node, name, strerror(e));
        errno = e;
        return -1;
    }
    close(dfd);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* reading back a record                                                    */
/* ------------------------------------------------------------------------ */

int faas_lend_record_peek(const char *spool_dir, const char *node, unsigned int job_id, unsigned int *ncpus,
                          int *lent, char *err, unsigned long errlen)
{
    static const char key[] = "\"slurm_cpus\":[";
    static const char lent_prefix[] = "{\"version\":1,\"state\":\"lent\",";
    static const char revoked_prefix[] = "{\"version\":1,\"state\":\"revoked\",";
    char final[32], buf[4096];
    size_t matched = 0;
    off_t off = 0;
    int dfd, rfd, in_list = 0, in_num = 0, state_known = 0;
    unsigned int count = 0;

    if (!ncpus || !lent) {
        set_err(err, errlen, "missing argument");
        return -1;
    }
    *ncpus = 0;
    *lent = 0;
    dfd = open_node_dir(spool_dir, node, 0, err, errlen);
    if (dfd == -2)
        return 1;
    if (dfd < 0)
        return -1;
    snprintf(final, sizeof(final), "%u.json", job_id);
    rfd = openat(dfd, final, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    close(dfd);
    if (rfd < 0) {
        if (errno == ENOENT)
            return 1;
        set_err(err, errlen, "cannot open %s/%s/%s: %s", spool_dir, node, final, strerror(errno));
        return -1;
    }
    for (;;) {
        ssize_t r = pread(rfd, buf, sizeof(buf), off), i;

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (off == 0) {
            if ((size_t)r >= sizeof(lent_prefix) - 1 && memcmp(buf, lent_prefix, sizeof(lent_prefix) - 1) == 0) {
                *lent = 1;
                state_known = 1;
            } else if ((size_t)r >= sizeof(revoked_prefix) - 1 &&
                       memcmp(buf, revoked_prefix, sizeof(revoked_prefix) - 1) == 0) {
                state_known = 1;
            }
        }
        for (i = 0; i < r; i++) {
            char c = buf[i];

            if (!in_list) {
                matched = c == key[matched] ? matched + 1 : (c == key[0] ? 1 : 0);
                if (matched == sizeof(key) - 1)
                    in_list = 1;
                continue;
            }
            if (c >= '0' && c <= '9') {
                if (!in_num)
                    count++;
                in_num = 1;
            } else if (c == ']') {
                close(rfd);
                if (!state_known)
                    goto bad;
                *ncpus = count;
                return 0;
            } else {
                in_num = 0;
            }
        }
        if (!state_known)
            break;
        off += r;
    }
    close(rfd);
bad:
    *lent = 0;
    set_err(err, errlen, "%s/%s/%s is not a version 1 lend record", spool_dir, node, final);
    errno = EINVAL;
    return -1;
}
