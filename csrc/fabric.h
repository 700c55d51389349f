/* slurm-faas libfabric RMA helpers: endpoint set-up, memory registration,
 * one-sided operations and the completion-polling loop, all in C.
 *
 * The Python binding (faas_runtime/_build_fabric.py, cffi API mode) reads this
 * header for its cdef, so it holds only declarations cffi understands: opaque
 * handles, fixed-width integers, one event struct. Every function returns 0 or
 * a negative libfabric error number (-FI_E...); ff_strerror() gives its text
 * (fi_strerror) and ff_last_error() the call that failed with the provider's
 * own words.
 *
 * Threading: one ff_ep is driven by one thread at a time. Target-side progress
 * of the tcp and shm providers happens only while the target polls its
 * completion queue, so a process that serves memory runs ff_progress_loop()
 * (which releases the GIL under cffi) or calls ff_wait() often.
 */
#ifndef FAAS_FABRIC_H
#define FAAS_FABRIC_H

#include <stddef.h>
#include <stdint.h>

typedef struct ff_ep ff_ep;
typedef struct ff_mr ff_mr;

/* What the provider agreed to (filled by ff_ep_describe). */
struct ff_desc {
    char provider[64];
    char fabric[64];
    char domain[64];
    uint64_t mr_mode;      /* FI_MR_* bits the provider requires */
    uint64_t cq_data_size; /* bytes of remote completion data, 0 = none */
    uint64_t inject_size;
    int use_cqdata;        /* 1: fi_writedata; 0: fi_write + an 8-byte send */
    int virt_addr;         /* 1: remote addresses are virtual addresses */
    uint64_t addrlen;      /* bytes of ff_ep_name() */
};

/* An event returned by ff_wait/ff_wait_match. */
#define FF_EV_NONE 0      /* timeout */
#define FF_EV_DATA 1      /* remote completion data (or fallback message) */
#define FF_EV_TX_ERROR 2  /* a posted (async) operation failed: tag says which */
#define FF_EV_RX_ERROR 3  /* an error completion without an operation of ours */
struct ff_event {
    int kind;
    int err;       /* positive FI_E... for errors */
    uint64_t data; /* remote completion data */
    uint64_t tag;  /* the async operation's tag */
};

/* Access for ff_mr_reg: local operations only, or also remote reads/writes. */
#define FF_ACCESS_LOCAL 0
#define FF_ACCESS_REMOTE 1

/* Open fabric, domain, address vector, completion queue and an RDM endpoint.
 * provider: libfabric provider name ("tcp" means "tcp;ofi_rxm", "shm", ...);
 * domain: an interface/domain name ("lo", "eth0") or NULL for the first one;
 * no_cqdata: 1 forces the write + send signalling even when cq_data works. */
int ff_ep_open(const char *provider, const char *domain, int no_cqdata, ff_ep **out);
/* Close the endpoint alone (cancels operations in flight); the caller then
 * closes its memory registrations, then ff_ep_close frees the rest. */
void ff_ep_shutdown(ff_ep *ep);
void ff_ep_close(ff_ep *ep);
int ff_ep_describe(ff_ep *ep, struct ff_desc *out);
int ff_ep_name(ff_ep *ep, void *buf, uint64_t *len);
int ff_av_insert(ff_ep *ep, const void *name, uint64_t *peer);
int ff_av_remove(ff_ep *ep, uint64_t peer);
const char *ff_strerror(int err);
const char *ff_last_error(ff_ep *ep);

/* Register len bytes at buf (len 0 registers one byte's worth of nothing:
 * a valid key for an empty buffer). Remote peers address byte i of the
 * region as ff_mr_base(mr) + i with key ff_mr_key(mr). */
int ff_mr_reg(ff_ep *ep, void *buf, uint64_t len, uint64_t access, ff_mr **out);
int ff_mr_close(ff_mr *mr);
uint64_t ff_mr_key(ff_mr *mr);
uint64_t ff_mr_base(ff_mr *mr);
long ff_mr_live(void); /* registrations open in this process (ff_mr objects) */

/* Blocking one-sided operations: post (in chunks, retrying -FI_EAGAIN while
 * driving progress) and busy-poll until every chunk completed locally.
 * timeout_us < 0 waits forever. A timeout returns -FI_ETIMEDOUT; the endpoint
 * must then be closed before the local buffer is released. */
int ff_write(ff_ep *ep, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
             uint64_t raddr, uint64_t rkey, int with_data, uint64_t data, int64_t timeout_us);
int ff_read(ff_ep *ep, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
            uint64_t raddr, uint64_t rkey, int64_t timeout_us);

/* Post a write (+ completion data) and return at once; completion is reaped by
 * later polling, a failure comes back as an FF_EV_TX_ERROR event with tag. */
int ff_post_write(ff_ep *ep, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
                  uint64_t raddr, uint64_t rkey, uint64_t data, uint64_t tag, int64_t timeout_us);

/* Busy-poll until the next event (any kind) or the timeout (kind FF_EV_NONE). */
int ff_wait(ff_ep *ep, struct ff_event *ev, int64_t timeout_us);
/* Busy-poll until a DATA event whose data equals `data`, or an error event. */
int ff_wait_match(ff_ep *ep, uint64_t data, struct ff_event *ev, int64_t timeout_us);

/* The client's hot path in one call: write len bytes (+ data) and wait for the
 * DATA event `reply` (the executor's result signal). */
int ff_call(ff_ep *ep, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
            uint64_t raddr, uint64_t rkey, uint64_t data, uint64_t reply,
            struct ff_event *ev, int64_t timeout_us);

/* The executor's hot path in one call: post the reply (as ff_post_write) and
 * wait for the next event. */
int ff_reply_wait(ff_ep *ep, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
                  uint64_t raddr, uint64_t rkey, uint64_t data, uint64_t tag,
                  struct ff_event *ev, int64_t timeout_us);

/* Drive progress until *stop becomes non-zero: busy-polls while work arrives,
 * then naps nap_us between polls once idle for spin_us. Events are queued for
 * ff_wait. Returns 0 when stopped, <0 on a fatal queue error. */
int ff_progress_loop(ff_ep *ep, volatile int *stop, int64_t spin_us, int64_t nap_us);

/* Atomic 64-bit load/store on shared memory (epoch words). */
uint64_t ff_load64(const void *p);
void ff_store64(void *p, uint64_t v);

#endif
