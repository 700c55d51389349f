/* slurm-faas libfabric RMA helpers: a memory server's progress loop, which
 * spins while the endpoint is used and naps when idle (see fabric.h). */
#define _GNU_SOURCE
#include "fabric_internal.h"

#define FF_FIRST_NAP_US 20      /* the progress loop's first nap once idle; doubles to nap_us */
#define FF_WORK_POLL_NS 3000    /* a poll this long did work (idle: < 1 us, 1-3 us cold after a nap) */
#define FF_WORK_SPIN_NS 200000  /* ... and keeps the loop spinning this long */
#define FF_WORK_RUN_NS 100000   /* work polls closer than this are a transfer, not noise */
#define FF_MAX_SPIN_NS 20000000 /* the longest spin one use buys (see ff_progress_loop) */

/* Did a peer read or write this endpoint's memory since the last call? (the
 * remote-operation counter moved; 0 without a counter) */
static int used_remotely(ff_ep *e, uint64_t *seen)
{
    if (!e->rcntr)
        return 0;
    uint64_t c = fi_cntr_read(e->rcntr);
    if (c == *seen)
        return 0;
    *seen = c;
    return 1;
}

int ff_progress_loop(ff_ep *e, volatile int *stop, int64_t spin_us, int64_t nap_us)
{
    int64_t t = now_ns(), until = t + spin_us * 1000, nap = 0; /* busy-poll until `until` */
    int64_t last_use = t - FF_MAX_SPIN_NS, last_work = t - FF_MAX_SPIN_NS;
    uint64_t seen = e->rcntr ? fi_cntr_read(e->rcntr) : 0;
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        int64_t t0 = now_ns();
        int p = poll_once(e);
        if (p < 0)
            return p;
        int64_t t1 = now_ns(), keep = 0;
        if (p > 0 || used_remotely(e, &seen)) {
            /* Spin spin_us, or twice the time since the previous use when that was
             * longer (up to FF_MAX_SPIN_NS): transfers that each take long (large ones,
             * or a loaded machine) must not see the loop asleep in the middle of the
             * next one, which would make them longer still. */
            int64_t gap = t1 - last_use;
            last_use = t1;
            keep = spin_us * 1000;
            if (gap < FF_MAX_SPIN_NS && 2 * gap > keep)
                keep = 2 * gap;
        } else if (t1 - t0 > FF_WORK_POLL_NS) {
            /* A poll in which the provider did work: it served one-sided traffic (the
             * only sign of it without a counter; and a counter moves only when an
             * operation is done, not while a large one is copied). Noise (interrupts,
             * preemption) looks alike but comes alone: a lone one buys a short spin, a
             * run of them (a transfer) spin_us. */
            keep = t1 - last_work < FF_WORK_RUN_NS ? spin_us * 1000 : FF_WORK_SPIN_NS;
            last_work = t1;
        }
        if (keep) {
            if (t1 + keep > until)
                until = t1 + keep;
            nap = 0;
        }
        if (nap_us <= 0 || t1 < until)
            continue; /* busy-poll: recently used, or configured to always spin */
        /* idle: nap, 20 us doubling up to nap_us, polling in between */
        nap = nap == 0 ? (nap_us < FF_FIRST_NAP_US ? nap_us : FF_FIRST_NAP_US) : (nap * 2 > nap_us ? nap_us : nap * 2);
        struct timespec ts = {.tv_sec = nap / 1000000, .tv_nsec = (nap % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}
