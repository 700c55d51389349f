/*
 * core_prolog.c - what job_prolog hands over to the extern step of the same
 * job and node: the task estimate from job_prolog's environment, and the
 * hand-over file <spool>/<node>/.<job_id>.pending that carries it.
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

unsigned int faas_tasks_estimate(const char *ntasks, const char *nnodes)
{
    unsigned long long t, n;

    if (!ntasks || !nnodes || parse_udec(ntasks, strlen(ntasks), 1000000000ULL, &t) != 0 ||
        parse_udec(nnodes, strlen(nnodes), 1000000000ULL, &n) != 0 || t == 0 || n == 0)
        return 0;
    t = (t + n - 1) / n;
    return t > FAAS_MAX_CPUS ? FAAS_MAX_CPUS : (unsigned int)t;
}

#define PENDING_MAGIC "faas-pending 1 "

int faas_pending_write(const char *spool_dir, const char *node, unsigned int job_id,
                       const struct faas_pending *p, char *err, unsigned long errlen)
{
    struct atomic_file f;
    char final[40];
    const char *c;
    int dfd;

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
    if (dfd < 0 || atomic_open(&f, dfd, spool_dir, node, job_id, err, errlen) != 0)
        return -1;
    snprintf(final, sizeof(final), ".%u.pending", job_id);
    wb_str(&f.w, PENDING_MAGIC);
    wb_fmt(&f.w, "given=%d tasks=%u spec=", p->given ? 1 : 0, p->tasks_on_node);
    wb_str(&f.w, p->spec);
    wb_str(&f.w, "\n");
    return atomic_commit(&f, final, 0, "write", err, errlen);
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
