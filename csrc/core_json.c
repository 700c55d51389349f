/*
 * core_json.c - a small write buffer over a file descriptor (the first error
 * sticks) and the JSON values the spool files are made of.
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void wb_flush(struct wbuf *w)
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

void wb_put(struct wbuf *w, const char *s, size_t n)
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

void wb_str(struct wbuf *w, const char *s)
{
    wb_put(w, s, strlen(s));
}

void wb_fmt(struct wbuf *w, const char *fmt, ...)
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
void wb_json_str(struct wbuf *w, const char *s)
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

void wb_uint_array(struct wbuf *w, const unsigned int *a, unsigned int n)
{
    unsigned int i;

    wb_put(w, "[", 1);
    for (i = 0; i < n; i++)
        wb_fmt(w, i ? ",%u" : "%u", a[i]);
    wb_put(w, "]", 1);
}
