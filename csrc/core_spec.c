/*
 * core_spec.c - the text grammars users and Slurm write: sizes ("4G"),
 * --faas-share specs ("cores=2,mem=4G") and Slurm core lists ("0-3,6").
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

#include <limits.h>
#include <string.h>

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

int faas_spec_parse(const char *text, struct faas_spec *out, char *err, unsigned long errlen)
{
    struct faas_spec s;
    struct list_cursor items;
    const char *p;
    size_t ilen;
    int more, seen_cores = 0, seen_mem = 0, seen_until = 0;
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
    list_start(&items, text);
    while ((more = list_next(&items, &p, &ilen)) > 0) {
        const char *item_end = p + ilen;
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
    }
    if (more < 0) {
        set_err(err, errlen, "empty item in '%s' (trailing comma)",
                excerpt(q, sizeof(q), text, strlen(text)));
        return -1;
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
    struct list_cursor items;
    const char *p;
    size_t ilen;
    unsigned int n = 0, id;
    int more;
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
    list_start(&items, text);
    while ((more = list_next(&items, &p, &ilen)) > 0) {
        const char *item_end = p + ilen;
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
    }
    if (more < 0) {
        set_err(err, errlen, "empty item in core list '%s' (trailing comma)",
                excerpt(q, sizeof(q), text, strlen(text)));
        return -1;
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
