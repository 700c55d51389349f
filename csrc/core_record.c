/*
 * core_record.c - lend records, <spool>/<node>/<job_id>.json: written
 * (or created, never replacing one) when a job lends, rewritten "revoked"
 * when it stops, peeked at when a step starts.
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* How every record of version 1 starts, as record_write writes it. */
static const char lent_prefix[] = "{\"version\":1,\"state\":\"lent\",";
static const char revoked_prefix[] = "{\"version\":1,\"state\":\"revoked\",";

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
    struct atomic_file f;
    char final[32];
    int dfd, revoked;

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
    if (dfd < 0 || atomic_open(&f, dfd, spool_dir, meta->node, meta->job_id, err, errlen) != 0)
        return -1;
    snprintf(final, sizeof(final), "%u.json", meta->job_id);

    wb_fmt(&f.w, "{\"version\":%d,\"state\":", FAAS_LEND_RECORD_VERSION);
    wb_json_str(&f.w, state);
    wb_fmt(&f.w, ",\"job_id\":%u,\"node\":", meta->job_id);
    wb_json_str(&f.w, meta->node);
    wb_fmt(&f.w, ",\"uid\":%u,\"gid\":%u,\"slurm_cpus\":", meta->uid, meta->gid);
    wb_uint_array(&f.w, lend->slurm_cpus, lend->ncpus);
    wb_str(&f.w, ",\"os_cpus\":");
    wb_uint_array(&f.w, lend->os_cpus, lend->ncpus);
    wb_fmt(&f.w, ",\"mem_mb\":%llu,\"end_time\":%lld,\"until_min\":%u,\"spec\":", lend->mem_mb, meta->end_time,
           meta->until_min);
    wb_json_str(&f.w, meta->spec);
    wb_fmt(&f.w, ",\"written_at\":%lld", (long long)time(NULL));
    if (meta->job_mem_mb > 0)
        wb_fmt(&f.w, ",\"job_mem_mb\":%llu", meta->job_mem_mb);
    if (revoked)
        wb_fmt(&f.w, ",\"revoked_at\":%lld", (long long)time(NULL));
    wb_str(&f.w, "}\n");

    return atomic_commit(&f, final, no_replace, "write", err, errlen);
}

/* Open the record <spool>/<node>/<job_id>.json (its name into final) for
 * reading, and its directory. Returns 0 with both fds, 1 when there is no
 * record, -1 with a message (errno kept). */
static int open_record(const char *spool_dir, const char *node, unsigned int job_id, char *final,
                       size_t finallen, int *dfd, int *rfd, char *err, unsigned long errlen)
{
    int e;

    *dfd = open_node_dir(spool_dir, node, 0, err, errlen);
    if (*dfd == -2)
        return 1;
    if (*dfd < 0)
        return -1;
    snprintf(final, finallen, "%u.json", job_id);
    *rfd = openat(*dfd, final, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (*rfd < 0) {
        e = errno;
        close(*dfd);
        if (e == ENOENT)
            return 1;
        set_err(err, errlen, "cannot open %s/%s/%s: %s", spool_dir, node, final, strerror(e));
        errno = e;
        return -1;
    }
    return 0;
}

int faas_lend_record_revoke(const char *spool_dir, const char *node, unsigned int job_id, char *err,
                            unsigned long errlen)
{
    struct atomic_file f;
    char final[32], buf[4096];
    struct stat st;
    int dfd, rfd, rc, e;
    off_t body_end, off;
    ssize_t r;

    rc = open_record(spool_dir, node, job_id, final, sizeof(final), &dfd, &rfd, err, errlen);
    if (rc != 0)
        return rc;
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

    if (atomic_open(&f, dfd, spool_dir, node, job_id, err, errlen) != 0) {
        e = errno;
        close(rfd);
        errno = e;
        return -1;
    }
    wb_str(&f.w, revoked_prefix);
    off = (off_t)sizeof(lent_prefix) - 1;
    while (off < body_end && !f.w.err) {
        size_t want = (size_t)(body_end - off) < sizeof(buf) ? (size_t)(body_end - off) : sizeof(buf);

        r = pread(rfd, buf, want, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            f.w.err = r < 0 ? errno : EIO;
            break;
        }
        wb_put(&f.w, buf, (size_t)r);
        off += r;
    }
    close(rfd);
    wb_fmt(&f.w, ",\"revoked_at\":%lld}\n", (long long)time(NULL));
    return atomic_commit(&f, final, 0, "rewrite", err, errlen);
}

int faas_lend_record_peek(const char *spool_dir, const char *node, unsigned int job_id, unsigned int *ncpus,
                          int *lent, char *err, unsigned long errlen)
{
    return faas_lend_record_cores(spool_dir, node, job_id, NULL, 0, ncpus, lent, err, errlen);
}

int faas_lend_record_cores(const char *spool_dir, const char *node, unsigned int job_id, unsigned int *cores,
                           unsigned int max, unsigned int *ncores, int *lent, char *err, unsigned long errlen)
{
    static const char key[] = "\"slurm_cpus\":[";
    char final[32], buf[4096];
    size_t matched = 0;
    off_t off = 0;
    int dfd, rfd, rc, in_list = 0, in_num = 0, state_known = 0;
    unsigned int count = 0, value = 0;

    if (!ncores || !lent) {
        set_err(err, errlen, "missing argument");
        return -1;
    }
    *ncores = 0;
    *lent = 0;
    rc = open_record(spool_dir, node, job_id, final, sizeof(final), &dfd, &rfd, err, errlen);
    if (rc != 0)
        return rc;
    close(dfd);
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
                    value = 0;
                if (value > FAAS_MAX_CPUS * 1000U)
                    goto bad_close;
                value = value * 10 + (unsigned int)(c - '0');
                in_num = 1;
                continue;
            }
            if (in_num) {
                if (cores && count >= max)
                    goto bad_close;
                if (cores)
                    cores[count] = value;
                count++;
                in_num = 0;
            }
            if (c == ']') {
                close(rfd);
                if (!state_known)
                    goto bad;
                *ncores = count;
                return 0;
            }
        }
        if (!state_known)
            break;
        off += r;
    }
bad_close:
    close(rfd);
bad:
    *lent = 0;
    set_err(err, errlen, "%s/%s/%s is not a version 1 lend record", spool_dir, node, final);
    errno = EINVAL;
    return -1;
}
