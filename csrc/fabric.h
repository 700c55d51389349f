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
    int activity;          /* FF_OPEN_SERVE: how ff_progress_loop sees remote use (FF_ACTIVITY_*) */
};
#define FF_ACTIVITY_POLL_TIME 0 /* guessed from polls in which the provider did work (tcp;ofi_rxm) */
#define FF_ACTIVITY_COUNTER 1   /* a counter of remote reads/writes (FI_RMA_EVENT; shm) */

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
 * flags: FF_OPEN_NO_CQDATA forces the write + send signalling even when cq_data
 * works; FF_OPEN_SERVE (a memory server, driven by ff_progress_loop) also asks
 * for a way to see one-sided use: a remote-operation counter (FI_RMA_EVENT)
 * where the provider has it (else ff_progress_loop guesses from poll times). */
#define FF_OPEN_NO_CQDATA 1
#define FF_OPEN_SERVE 2
int ff_ep_open(const char *provider, const char *domain, int flags, ff_ep **out);
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

/* A one-sided transfer in flight, for callers that wait in slices and check
 * something between them (is the peer still alive?). ff_post_rma posts the
 * read or write (in chunks, retrying -FI_EAGAIN while driving progress up to
 * timeout_us) and returns it in *out. ff_op_wait busy-polls up to timeout_us:
 * 0 = done, -FI_EAGAIN = not yet (the caller still owns op: wait again or
 * abandon it), anything else = failed; after 0 or a failure op is gone.
 * ff_op_abandon gives op up (freed when its completions arrive or with the
 * endpoint; close the endpoint before the local buffer is released). */
typedef struct ff_op ff_op;
int ff_post_rma(ff_ep *ep, int is_read, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
                uint64_t raddr, uint64_t rkey, int64_t timeout_us, ff_op **out);
int ff_op_wait(ff_ep *ep, ff_op *op, int64_t timeout_us);
void ff_op_abandon(ff_ep *ep, ff_op *op);

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

/* The client's hot path with the ring header (faas_runtime.rma.HEADER) done in C,
 * for one leased ring slot: ff_invoke writes header(len, seq) + payload into
 * lmr at 0, writes it into the executor's slot with the data slot_bits | seq
 * (seq counts up, 16 bits), and waits up to iv->wait_us for that DATA event.
 * Returns the result's length (>= 0) when the result came inline and without
 * error flags (it lies in res at FF_RING_HSIZE); FF_INVOKE_MORE when Python must
 * look: ev.kind FF_EV_NONE = not yet (keep waiting for `data` with
 * ff_wait_match, then read the header), FF_EV_DATA = a bulk or error result
 * (read the header), an error kind = the executor is lost; or a negative
 * libfabric error. Set up once per client; the fields are the Python layer's. */
struct ff_invoker {
    ff_ep *ep;
    ff_mr *lmr; /* request staging (local) */
    ff_mr *res; /* result buffer (the executor writes it) */
    uint64_t peer, raddr, rkey;
    uint64_t slot_bits; /* slot << 16 */
    uint64_t seq;
    uint64_t data;      /* the last request's immediate data */
    int64_t timeout_us; /* for posting the write (-1: none) */
    int64_t wait_us;    /* for the reply (-1: forever) */
    struct ff_event ev;
};
#define FF_INVOKE_MORE (-1000000)
int64_t ff_invoke(struct ff_invoker *iv, const char *payload, uint64_t len);

/* Drive progress until *stop becomes non-zero (a memory server's loop). It
 * busy-polls while the endpoint is used and backs off when idle, so that an
 * idle server does not burn its core: after spin_us without use it sleeps
 * 20 us, doubling up to nap_us, with a poll between sleeps; use ends the
 * back-off. Use = a completion, or the remote-operation counter moved
 * (FF_OPEN_SERVE where the provider has FI_RMA_EVENT); and, as a guess, a poll
 * in which the provider did work (it served one-sided traffic, which leaves
 * nothing in the queue, or copied part of a large transfer) buys 200 us of
 * spinning. nap_us <= 0:
 * busy-poll always. Events are queued for ff_wait. Returns 0 when stopped, <0
 * on a fatal queue error. */
int ff_progress_loop(ff_ep *ep, volatile int *stop, int64_t spin_us, int64_t nap_us);

/* Native functions (C, in a shared object; see csrc/faas_native.h for the
 * contract function authors build against). ff_native_open dlopens `path`
 * (RTLD_NOW | RTLD_LOCAL) and looks up `symbol`; on failure it returns
 * -FI_ENOENT (library) or -FI_ENOSYS (symbol) and writes dlerror() text into
 * err. ff_native_call runs the function under the handle's mutex, so calls
 * from any thread (the ZeroMQ path) and from ff_serve_native (the RMA path)
 * run one at a time. */
typedef struct ff_native ff_native;
#define FF_NATIVE_TOO_SMALL 1 /* the function's "out_cap too small, *out_len = needed" */
int ff_native_open(const char *path, const char *symbol, ff_native **out, char *err, uint64_t errlen);
/* A handle whose function is Python: ff_native_call (and so ff_serve_native)
 * calls the module's ff_py_call(handle, ...) (an extern "Python" function of the
 * binding), so a Python handler is served by the C loop as well. */
int ff_native_python(void *handle, ff_native **out);
void ff_native_close(ff_native *nf);
int ff_native_call(ff_native *nf, const void *in, uint64_t in_len, void *out, uint64_t out_cap,
                   uint64_t *out_len);

/* One leased slot of an RMA request ring, as ff_serve_native sees it. The
 * owner (faas_runtime.rma) sets fast = 0 where Python must handle the next
 * request (lease ended, a staged bulk result to release, no lease). */
struct ff_slot {
    uint64_t peer;  /* the client's address */
    uint64_t raddr; /* the client's result buffer */
    uint64_t rkey;
    uint64_t rsize; /* its size in bytes */
    int fast;
};

/* The ring header (faas_runtime.rma.HEADER): 32 bytes, little endian. */
#define FF_RING_HSIZE 32
#define FF_RING_BULK 1
#define FF_RING_GATHER 8 /* the body is a segment table (faas_runtime/rma/gather.py): Python's */
#define FF_EV_NATIVE 4 /* the native function did not succeed on a fast-path request:
                          err = its return code (or -1: *out_len > out_cap), tag = its *out_len,
                          data = the request's immediate data; the reply is not yet sent */

/* The executor's hot path for a native function, in C: wait for requests and
 * answer every one of a `fast` slot (inline payload, result fits the client's
 * buffer, function returned 0) by calling the function straight on the ring
 * slot and writing header + result into the client's buffer (fi_writedata).
 * Returns 0 with *ev set for anything else (the event to handle in Python), or
 * with ev->kind FF_EV_NONE once timeout_us passed or *attention became
 * non-zero; <0 on a fatal queue error. *served counts the requests answered. */
int ff_serve_native(ff_ep *ep, ff_native *nf, ff_mr *ring, ff_mr *out, uint64_t slot_size,
                    struct ff_slot *slots, uint64_t nslots, int check_json, volatile int *attention,
                    struct ff_event *ev, int64_t timeout_us, uint64_t *served);
/* With check_json, a result that is not JSON text (UTF-8, RFC 8259 plus Python's
 * NaN/Infinity) comes back as FF_EV_NATIVE with err FF_NATIVE_NOT_JSON. */
#define FF_NATIVE_NOT_JSON (-2)
/* 1 if p[0, n) is one JSON value (surrounded by optional white space) in valid UTF-8. */
int ff_json_valid(const char *p, uint64_t n);

/* Atomic 64-bit load/store on shared memory (epoch words). */
uint64_t ff_load64(const void *p);
void ff_store64(void *p, uint64_t v);

#endif
