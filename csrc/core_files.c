/*
 * core_files.c - the files of the spool and of /sys: node directories of the
 * spool, files replaced atomically in them, small files read whole.
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

/* Refuse anything that could leave <spool>/<node>/: empty, '/', "..",
 * control characters, over-long. */
int node_name_ok(const char *node, char *err, unsigned long errlen)
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

/* Open <spool>/<node> as a directory fd, creating <node> (0700) if needed:
 * the lend records are root's (slurmstepd writes them, the agent as root reads
 * them), users need nothing there. The spool itself must exist. Returns the fd, -1 on error (message set),
 * or -2 when create is 0 and something is missing (ENOENT). */
int open_node_dir(const char *spool_dir, const char *node, int create, char *err, unsigned long errlen)
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
    if (create && mkdirat(sfd, node, 0700) == 0) {
        /* exact mode whatever the umask */
        if (fchmodat(sfd, node, 0700, 0) != 0) {
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

int atomic_open(struct atomic_file *f, int dfd, const char *spool_dir, const char *node, unsigned int job_id,
                char *err, unsigned long errlen)
{
    f->dfd = dfd;
    f->spool_dir = spool_dir;
    f->node = node;
    f->w.err = 0;
    f->w.len = 0;
    f->w.fd = open_temp(dfd, job_id, f->tmpname, sizeof(f->tmpname));
    if (f->w.fd < 0) {
        int e = errno;

        close(dfd);
        set_err(err, errlen, "cannot create a temp file in %s/%s: %s", spool_dir, node, strerror(e));
        errno = e;
        return -1;
    }
    return 0;
}

/* Flush, fsync and close the temp file, rename it over final, fsync the
 * directory. Removes the temp file on failure. Returns 0 or -1 (errno in
 * *eout, the failing step in *what). no_replace: link(2) instead of
 * rename(2), so an existing final file wins (EEXIST) and is never replaced:
 * the first of two writers keeps its record. */
static int commit_temp(int dfd, struct wbuf *w, const char *tmpname, const char *final, int *eout,
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

int atomic_commit(struct atomic_file *f, const char *final, int no_replace, const char *verb, char *err,
                  unsigned long errlen)
{
    const char *what = "";
    int e;

    if (commit_temp(f->dfd, &f->w, f->tmpname, final, &e, &what, no_replace) != 0) {
        close(f->dfd);
        set_err(err, errlen, "cannot %s %s/%s/%s (%s): %s", verb, f->spool_dir, f->node, final, what,
                strerror(e));
        errno = e;
        return -1;
    }
    close(f->dfd);
    return 0;
}

/* Read a small text file whole (at most buflen - 1 bytes, NUL-terminated,
 * trailing whitespace removed). Returns 0, 1 when it does not exist, -1 on
 * error (errno set). */
int read_small_file(const char *path, char *buf, size_t buflen)
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
