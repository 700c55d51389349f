/*
 * core_internal.h - what the files of the core share; not part of the API
 * (that is faas_core.h, which cffi reads). Every core_*.c and faas_core.c
 * defines _POSIX_C_SOURCE and then includes this header first. The rules of
 * the core are in faas_core.c.
 */
#ifndef FAAS_CORE_INTERNAL_H
#define FAAS_CORE_INTERNAL_H

#include <fcntl.h>
#include <stddef.h>

#include "faas_core.h"

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

#define SPEC_GRAMMAR "auto, no or cores=N,mem=SIZE[,until=MIN]"

/* Internal to whatever links the core (the plugin, the cffi module). */
#pragma GCC visibility push(hidden)

/* faas_core.c: error messages, strict numbers, comma lists --------------- */

/* printf into err (when err is not NULL and errlen > 0). */
void set_err(char *err, unsigned long errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *excerpt(char *buf, size_t buflen, const char *s, size_t n);
int parse_udec(const char *s, size_t n, unsigned long long limit, unsigned long long *out);
/* 1 when [k, k+klen) is name. */
int keyeq(const char *k, size_t klen, const char *name);

/* The items of a comma-separated list, one at a time: list_next gives the
 * next one, [*item, *item + *len) (len 0 for an empty item, as in "a,,b"),
 * and returns 1; 0 after the last item; -1 when the list ends in a comma. */
struct list_cursor {
    const char *start, *p, *end; /* p: the next item, NULL after the last */
};

void list_start(struct list_cursor *c, const char *text);
int list_next(struct list_cursor *c, const char **item, size_t *len);

/* core_json.c: a small write buffer over a file descriptor; the first error
 * sticks ------------------------------------------------------------------ */

struct wbuf {
    int fd;
    int err; /* errno of the first failure, 0 if none */
    size_t len;
    char buf[4096];
};

void wb_flush(struct wbuf *w);
void wb_put(struct wbuf *w, const char *s, size_t n);
void wb_str(struct wbuf *w, const char *s);
void wb_fmt(struct wbuf *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void wb_json_str(struct wbuf *w, const char *s);
void wb_uint_array(struct wbuf *w, const unsigned int *a, unsigned int n);

/* core_files.c: spool directories, atomic replacement, small files ------- */

int node_name_ok(const char *node, char *err, unsigned long errlen);
int open_node_dir(const char *spool_dir, const char *node, int create, char *err, unsigned long errlen);
int read_small_file(const char *path, char *buf, size_t buflen);

/* A file of <spool>/<node>/ being replaced atomically: written through w into
 * a fresh temp file beside it, which atomic_commit renames over it. */
struct atomic_file {
    int dfd;                     /* <spool>/<node>: owned, closed by atomic_open's failure or atomic_commit */
    const char *spool_dir, *node; /* for messages */
    char tmpname[64];
    struct wbuf w;
};

/* Create the temp file of job_id in dfd (which f takes over) and set up
 * f->w. Returns 0, or -1 with the message in err and errno kept (dfd is
 * closed). */
int atomic_open(struct atomic_file *f, int dfd, const char *spool_dir, const char *node, unsigned int job_id,
                char *err, unsigned long errlen);
/* Make the temp file <spool>/<node>/<final> (rename; link when no_replace,
 * so that an existing final wins with errno EEXIST) and close dfd. verb names
 * the operation in the message ("cannot <verb> <path> (<step>): <reason>").
 * Returns 0, or -1 with the message in err and errno kept. */
int atomic_commit(struct atomic_file *f, const char *final, int no_replace, const char *verb, char *err,
                  unsigned long errlen);

#pragma GCC visibility pop

#endif
