/* What the files of the libfabric RMA helpers share; not part of the API (that
 * is fabric.h, which cffi reads). Every fabric_*.c defines _GNU_SOURCE and then
 * includes this header first. */
#ifndef FAAS_FABRIC_INTERNAL_H
#define FAAS_FABRIC_INTERNAL_H

#include "fabric.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

/* A Python handler's call (ff_native_python): defined by the cffi module
 * (extern "Python+C", faas_runtime/_build_fabric.py; faas_runtime.rma.server). */
int ff_py_call(void *handle, const void *in, uint64_t in_len, void *out, uint64_t out_cap, uint64_t *out_len);

#define FF_NRECV 32        /* 8-byte receives for the write + send fallback */
#define FF_EVQ 4096        /* queued events (one per outstanding request at most) */
#define FF_CHUNK (8u << 20) /* largest single RMA operation we post */

enum { OP_SYNC = 1, OP_ASYNC = 2, OP_RECV = 3 };

struct ff_op {
    struct fi_context2 ctx; /* first: libfabric hands &ctx back as op_context */
    int kind;
    int err;          /* first error, positive FI_E... */
    int orphan;       /* sync op abandoned by a timeout: free at completion */
    uint64_t pending; /* outstanding completions */
    uint64_t tag;
    struct ff_op *next_orphan;
};

struct ff_mr {
    struct fid_mr *mr;
    char *buf; /* local address of byte 0 */
    void *desc;
    uint64_t key;
    uint64_t base;
};

struct ff_ep {
    struct fi_info *info;
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_av *av;
    struct fid_cq *cq;
    struct fid_ep *ep;
    struct fid_cntr *rcntr; /* FF_OPEN_SERVE: counts remote reads/writes (FI_RMA_EVENT) */
    int mr_rma_event;       /* registrations must be bound to rcntr (FI_MR_RMA_EVENT) */
    int use_cqdata, saw_ordered, virt_addr, mr_endpoint, posted_recvs;
    uint64_t next_key;
    struct ff_op recv_op[FF_NRECV];
    uint64_t recv_buf[FF_NRECV];
    struct fid_mr *recv_mr;
    struct ff_event evq[FF_EVQ];
    unsigned evq_len;
    struct ff_op *orphans;
    struct ff_op *spare; /* one freed op kept for the next operation (no malloc per call) */
    char err[320];
};

/* Time, for deadlines (inline: the polling loops call these between polls). */
static inline int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int expired(int64_t deadline) { return deadline >= 0 && now_us() >= deadline; }
static inline int64_t deadline_of(int64_t timeout_us) { return timeout_us < 0 ? -1 : now_us() + timeout_us; }

/* Little-endian fields of the ring header (FF_RING_HSIZE bytes: length,
 * 16 reserved, flags at 24, seq at 28). */
static inline uint64_t get_le64(const char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | (unsigned char)p[i];
    return v;
}

static inline uint32_t get_le32(const char *p)
{
    return (uint32_t)(unsigned char)p[0] | (uint32_t)(unsigned char)p[1] << 8 |
           (uint32_t)(unsigned char)p[2] << 16 | (uint32_t)(unsigned char)p[3] << 24;
}

static inline void put_le(char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        p[i] = (char)(v & 0xff);
}

/* A ring header without flags: length len, then zeroes, then seq. */
static inline void put_ring_header(char *h, uint64_t len, uint32_t seq)
{
    put_le(h, len, 8);
    memset(h + 8, 0, 20);
    put_le(h + 28, seq, 4);
}

#pragma GCC visibility push(hidden)

/* fabric_endpoint.c: record what failed in e->err; returns rc as a negative FI_E... */
int fail(ff_ep *e, const char *what, int rc);

/* fabric_cq.c: operations, the completion queue and the events it yields */
int post_recv(ff_ep *e, int i);
struct ff_op *op_new(ff_ep *e, int kind);
void op_free(ff_ep *e, struct ff_op *op);
/* Read the completion queue once. Returns >0 if something happened, 0 if the
 * queue was empty, <0 on a fatal error. */
int poll_once(ff_ep *e);
/* Busy-poll until the next event (match: the next DATA event carrying data,
 * or an error event) or the deadline (kind FF_EV_NONE). */
int wait_event_until(ff_ep *e, int match, uint64_t data, struct ff_event *ev, int64_t deadline);
int wait_event(ff_ep *e, int match, uint64_t data, struct ff_event *ev, int64_t timeout_us);

/* fabric_rma.c: a blocking write or read, in chunks (see ff_write) */
int rma_sync(ff_ep *e, int is_read, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer, uint64_t raddr,
             uint64_t rkey, int with_data, uint64_t data, int64_t timeout_us);

#pragma GCC visibility pop

#endif
