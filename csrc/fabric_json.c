/* slurm-faas libfabric RMA helpers: ff_json_valid, is a native function's
 * result JSON text (UTF-8, RFC 8259 plus Python's NaN/Infinity)? (see fabric.h) */
#define _GNU_SOURCE
#include "fabric_internal.h"

static int utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned min;
        if ((c & 0xE0) == 0xC0)
            k = 1, min = 0x80, c &= 0x1F;
        else if ((c & 0xF0) == 0xE0)
            k = 2, min = 0x800, c &= 0x0F;
        else if ((c & 0xF8) == 0xF0)
            k = 3, min = 0x10000, c &= 0x07;
        else
            return 0;
        if (i + k >= n)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return 0;
            c = c << 6 | (p[i + j] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

static const char *j_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static const char *j_lit(const char *p, const char *end, const char *lit)
{
    size_t n = strlen(lit);
    return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0 ? p + n : NULL;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static const char *j_string(const char *p, const char *end)
{
    if (p >= end || *p != '"')
        return NULL;
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c == '\\') {
            if (++p >= end)
                return NULL;
            if (*p == 'u') {
                if (end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) || !is_hex(p[4]))
                    return NULL;
                p += 4;
            } else if (!strchr("\"\\/bfnrt", *p) || *p == 0) {
                return NULL;
            }
        }
    }
    return NULL;
}

static const char *j_number(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == 'I')
        return j_lit(p, end, "Infinity");
    if (p >= end || !is_digit(*p))
        return NULL;
    if (*p == '0')
        p++;
    else
        while (p < end && is_digit(*p))
            p++;
    if (p < end && *p == '.') {
        if (++p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        if (++p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || !is_digit(*p))
            return NULL;
        while (p < end && is_digit(*p))
            p++;
    }
    return p;
}

static const char *j_value(const char *p, const char *end, int depth)
{
    if (p >= end || depth > 512)
        return NULL;
    switch (*p) {
    case '"':
        return j_string(p, end);
    case 't':
        return j_lit(p, end, "true");
    case 'f':
        return j_lit(p, end, "false");
    case 'n':
        return j_lit(p, end, "null");
    case 'N':
        return j_lit(p, end, "NaN");
    case '[':
    case '{': {
        char close = *p == '[' ? ']' : '}';
        int obj = *p == '{';
        p = j_ws(p + 1, end);
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (obj) {
                if (!(p = j_string(p, end)))
                    return NULL;
                p = j_ws(p, end);
                if (p >= end || *p != ':')
                    return NULL;
                p = j_ws(p + 1, end);
            }
            if (!(p = j_value(p, end, depth + 1)))
                return NULL;
            p = j_ws(p, end);
            if (p < end && *p == ',') {
                p = j_ws(p + 1, end);
                continue;
            }
            return p < end && *p == close ? p + 1 : NULL;
        }
    }
    default:
        return j_number(p, end);
    }
}

int ff_json_valid(const char *p, uint64_t n)
{
    if (!utf8_valid((const unsigned char *)p, (size_t)n))
        return 0;
    const char *end = p + n, *q = j_value(j_ws(p, end), end, 0);
    return q && j_ws(q, end) == end;
}
