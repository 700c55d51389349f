/* Native (C) functions the runtime tests and benchmarks run (csrc/faas_native.h).
 * Built by the tests and benchmarks, never committed as a binary:
 *     cc -shared -fPIC -O2 -I csrc -o libnative_fns.so tests/functions/native_fns.c
 * Payloads and results are JSON text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faas_native.h"

/* The contract's way to return n bytes: say how many, then copy them if they fit. */
static int reply(const void *bytes, size_t n, void *out, size_t out_cap, size_t *out_len)
{
    *out_len = n;
    if (n > out_cap)
        return FAAS_NATIVE_TOO_SMALL;
    memcpy(out, bytes, n);
    return FAAS_NATIVE_OK;
}

/* The payload back, byte for byte. */
int echo(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len)
{
    return reply(in, in_len, out, out_cap, out_len);
}

/* {"len": <bytes>, "fnv1a": "<64-bit FNV-1a of the payload, hex>"} */
int digest(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < in_len; i++)
        h = (h ^ ((const unsigned char *)in)[i]) * 1099511628211ULL;
    char buf[96];
    int n = snprintf(buf, sizeof buf, "{\"len\": %zu, \"fnv1a\": \"%016llx\"}", in_len, (unsigned long long)h);
    return reply(buf, (size_t)n, out, out_cap, out_len);
}

/* The payload is a number N: the result is a JSON string of N 'x' (large results). */
int repeat(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len)
{
    char num[32];
    size_t k = in_len < sizeof num - 1 ? in_len : sizeof num - 1;
    memcpy(num, in, k);
    num[k] = 0;
    size_t n = (size_t)strtoull(num, NULL, 10);
    *out_len = n + 2;
    if (n + 2 > out_cap)
        return FAAS_NATIVE_TOO_SMALL;
    char *o = out;
    o[0] = '"';
    memset(o + 1, 'x', n);
    o[n + 1] = '"';
    return FAAS_NATIVE_OK;
}

/* Fails with code 3 and a message. */
int fail(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len)
{
    (void)in;
    (void)in_len;
    static const char msg[] = "bad input (from C)";
    size_t n = sizeof msg - 1 < out_cap ? sizeof msg - 1 : out_cap;
    memcpy(out, msg, n);
    *out_len = n;
    return 3;
}

/* Claims to have written more than it was given room for. */
int liar(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len)
{
    (void)in;
    (void)in_len;
    (void)out;
    *out_len = out_cap + 1;
    return FAAS_NATIVE_OK;
}

/* Says it needs more room however much it gets. */
int greedy(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len)
{
    (void)in;
    (void)in_len;
    (void)out;
    *out_len = out_cap + 1;
    return FAAS_NATIVE_TOO_SMALL;
}


/* Succeeds with bytes that are not JSON text. */
int garbage(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len)
{
    (void)in;
    (void)in_len;
    static const char bytes[] = "\xff not json";
    return reply(bytes, sizeof bytes - 1, out, out_cap, out_len);
}

/* Takes the payload, returns nothing (the value null): bandwidth benchmarks. */
int sink(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len)
{
    (void)in;
    (void)in_len;
    return reply("null", 4, out, out_cap, out_len);
}
