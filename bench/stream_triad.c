/* A memory-bound batch kernel for bench/bench_remote_memory_interference.py: the STREAM
 * triad a[i] = b[i] + s * c[i] over three arrays far larger than the caches, repeated for
 * a fixed time. Counts 24 bytes per element and iteration, as STREAM does.
 *
 *   stream_triad MIB_PER_ARRAY SECONDS
 *   prints "iters=<k> median_mbs=<m> best_mbs=<b> mib=<MIB_PER_ARRAY>"
 *
 * Build: cc -O2 -o stream_triad stream_triad.c   (no OpenMP: one core, as pinned)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MIB_PER_ARRAY SECONDS\n", argv[0]);
        return 1;
    }
    size_t mib = strtoull(argv[1], NULL, 10), n = mib * (1u << 20) / sizeof(double);
    double seconds = atof(argv[2]);
    double *a = aligned_alloc(64, n * sizeof *a), *b = aligned_alloc(64, n * sizeof *b),
           *c = aligned_alloc(64, n * sizeof *c);
    if (!a || !b || !c)
        return 2;
    for (size_t i = 0; i < n; i++) /* touch every page before timing */
        a[i] = 0.0, b[i] = 1.0, c[i] = 2.0;
    size_t cap = 100000, k = 0;
    double *bw = malloc(cap * sizeof *bw), s = 3.0, end = now_s() + seconds;
    while (k < cap) {
        double t0 = now_s();
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] + s * c[i];
        double t1 = now_s();
        bw[k++] = 3.0 * n * sizeof(double) / (t1 - t0) / 1e6;
        if (t1 >= end)
            break;
    }
    volatile double sink = a[n / 2]; /* keep the stores */
    (void)sink;
    qsort(bw, k, sizeof *bw, cmp);
    printf("iters=%zu median_mbs=%.1f best_mbs=%.1f mib=%zu\n", k, bw[k / 2], bw[k - 1], mib);
    return 0;
}
