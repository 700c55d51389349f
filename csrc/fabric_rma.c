/* slurm-faas libfabric RMA helpers: one-sided reads and writes (blocking, in
 * flight, or posted), and the client's and executor's hot paths built on them
 * (see fabric.h). */
#define _GNU_SOURCE
#include "fabric_internal.h"

/* The transmit queue is full (-FI_EAGAIN): drive progress once before trying
 * again. 0: try again; <0: a fatal queue error, or the deadline passed (the
 * message: what). */
static int progress_before_retry(ff_ep *e, int64_t deadline, const char *what)
{
    int p = poll_once(e);
    if (p < 0)
        return p;
    if (expired(deadline))
        return fail(e, what, -FI_ETIMEDOUT);
    return 0;
}

/* Post one RMA operation, retrying -FI_EAGAIN while driving progress. */
static int post_rma(ff_ep *e, int is_read, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
                    uint64_t raddr, uint64_t rkey, int with_data, uint64_t data, struct ff_op *op,
                    int64_t deadline)
{
    struct iovec iov = {.iov_base = lmr->buf + loff, .iov_len = len};
    void *desc = lmr->desc;
    struct fi_rma_iov rma = {.addr = raddr, .len = len, .key = rkey};
    struct fi_msg_rma msg = {.msg_iov = &iov, .desc = &desc, .iov_count = 1, .addr = peer,
                             .rma_iov = &rma, .rma_iov_count = 1, .context = &op->ctx, .data = data};
    uint64_t flags = FI_COMPLETION | (with_data ? FI_REMOTE_CQ_DATA : 0);
    ssize_t rc;
    while ((rc = is_read ? fi_readmsg(e->ep, &msg, flags) : fi_writemsg(e->ep, &msg, flags)) == -FI_EAGAIN) {
        int p = progress_before_retry(e, deadline, is_read ? "fi_read: queue full until the timeout"
                                                           : "fi_write: queue full until the timeout");
        if (p)
            return p;
    }
    if (rc)
        return fail(e, is_read ? "fi_read" : "fi_write", (int)rc);
    op->pending++;
    return 0;
}

/* Send the 8-byte signal of the write + send fallback. */
static int send_signal(ff_ep *e, uint64_t peer, uint64_t data, int64_t deadline)
{
    ssize_t rc;
    while ((rc = fi_inject(e->ep, &data, sizeof data, peer)) == -FI_EAGAIN) {
        int p = progress_before_retry(e, deadline, "fi_inject: queue full until the timeout");
        if (p)
            return p;
    }
    return rc ? fail(e, "fi_inject", (int)rc) : 0;
}

/* Busy-poll until op has no pending completions. On timeout the op becomes
 * an orphan that poll_once frees when its completions finally arrive. */
static int wait_op(ff_ep *e, struct ff_op *op, int64_t deadline)
{
    unsigned spins = 0;
    while (op->pending) {
        int p = poll_once(e);
        if (p < 0)
            return p;
        if (p == 0 && (++spins & 63) == 0 && expired(deadline)) {
            op->orphan = 1;
            op->next_orphan = e->orphans;
            e->orphans = op;
            return fail(e, "RMA operation did not complete before the timeout", -FI_ETIMEDOUT);
        }
    }
    int err = op->err;
    op_free(e, op);
    if (err)
        return -err; /* e->err already holds the completion error text */
    return 0;
}

int rma_sync(ff_ep *e, int is_read, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
                    uint64_t raddr, uint64_t rkey, int with_data, uint64_t data, int64_t timeout_us)
{
    int64_t deadline = deadline_of(timeout_us);
    struct ff_op *op = op_new(e, OP_SYNC);
    if (!op)
        return fail(e, "rma", -FI_ENOMEM);
    int signal = with_data && !e->use_cqdata;
    uint64_t off = 0;
    int rc = 0;
    /* Every chunk but the last, then (after they completed, so the signal
     * never overtakes data) the last one carrying the completion data. */
    while (len - off > FF_CHUNK) {
        if ((rc = post_rma(e, is_read, lmr, loff + off, FF_CHUNK, peer, raddr + off, rkey, 0, 0, op, deadline)))
            break;
        off += FF_CHUNK;
    }
    if (!rc && with_data && off) {
        if ((rc = wait_op(e, op, deadline)))
            return rc;
        op = op_new(e, OP_SYNC);
        if (!op)
            return fail(e, "rma", -FI_ENOMEM);
    }
    if (!rc)
        rc = post_rma(e, is_read, lmr, loff + off, len - off, peer, raddr + off, rkey, with_data && !signal, data,
                      op, deadline);
    if (rc && op->pending == 0) {
        op_free(e, op);
        return rc;
    }
    int wrc = wait_op(e, op, deadline);
    if (rc)
        return rc;
    if (wrc)
        return wrc;
    if (signal)
        return send_signal(e, peer, data, deadline);
    return 0;
}

static void orphan_op(ff_ep *e, struct ff_op *op)
{
    if (op->pending == 0) {
        op_free(e, op);
        return;
    }
    op->orphan = 1;
    op->next_orphan = e->orphans;
    e->orphans = op;
}

int ff_post_rma(ff_ep *e, int is_read, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer, uint64_t raddr,
                uint64_t rkey, int64_t timeout_us, ff_op **out)
{
    *out = NULL;
    int64_t deadline = deadline_of(timeout_us);
    struct ff_op *op = op_new(e, OP_SYNC);
    if (!op)
        return fail(e, "rma", -FI_ENOMEM);
    uint64_t off = 0;
    do {
        uint64_t n = len - off > FF_CHUNK ? FF_CHUNK : len - off;
        int rc = post_rma(e, is_read, lmr, loff + off, n, peer, raddr + off, rkey, 0, 0, op, deadline);
        if (rc) {
            orphan_op(e, op); /* chunks already posted complete into nothing */
            return rc;
        }
        off += n;
    } while (off < len);
    *out = op;
    return 0;
}

int ff_op_wait(ff_ep *e, ff_op *op, int64_t timeout_us)
{
    int64_t deadline = deadline_of(timeout_us);
    unsigned spins = 0;
    while (op->pending) {
        int p = poll_once(e);
        if (p < 0) {
            orphan_op(e, op);
            return p;
        }
        if (p == 0 && (++spins & 63) == 0 && expired(deadline))
            return -FI_EAGAIN;
    }
    int err = op->err;
    op_free(e, op);
    return err ? -err : 0;
}

void ff_op_abandon(ff_ep *e, ff_op *op)
{
    if (op)
        orphan_op(e, op);
}

int ff_write(ff_ep *e, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer, uint64_t raddr, uint64_t rkey,
             int with_data, uint64_t data, int64_t timeout_us)
{
    return rma_sync(e, 0, lmr, loff, len, peer, raddr, rkey, with_data, data, timeout_us);
}

int ff_read(ff_ep *e, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer, uint64_t raddr, uint64_t rkey,
            int64_t timeout_us)
{
    return rma_sync(e, 1, lmr, loff, len, peer, raddr, rkey, 0, 0, timeout_us);
}

int ff_post_write(ff_ep *e, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer, uint64_t raddr,
                  uint64_t rkey, uint64_t data, uint64_t tag, int64_t timeout_us)
{
    if (!e->use_cqdata || len > FF_CHUNK) /* the fallback must order data before signal: wait */
        return rma_sync(e, 0, lmr, loff, len, peer, raddr, rkey, 1, data, timeout_us);
    struct ff_op *op = op_new(e, OP_ASYNC);
    if (!op)
        return fail(e, "ff_post_write", -FI_ENOMEM);
    op->tag = tag;
    int rc = post_rma(e, 0, lmr, loff, len, peer, raddr, rkey, 1, data, op, deadline_of(timeout_us));
    if (rc)
        op_free(e, op);
    return rc;
}

int ff_call(ff_ep *e, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer, uint64_t raddr, uint64_t rkey,
            uint64_t data, uint64_t reply, struct ff_event *ev, int64_t timeout_us)
{
    int64_t t0 = now_us();
    int rc = rma_sync(e, 0, lmr, loff, len, peer, raddr, rkey, 1, data, timeout_us);
    if (rc)
        return rc;
    int64_t left = timeout_us < 0 ? -1 : timeout_us - (now_us() - t0);
    return wait_event(e, 1, reply, ev, left < 0 && timeout_us >= 0 ? 0 : left);
}

int64_t ff_invoke(struct ff_invoker *iv, const char *payload, uint64_t len)
{
    int64_t timeout_us = iv->timeout_us, wait_us = iv->wait_us;
    ff_ep *e = iv->ep;
    char *req = iv->lmr->buf;
    iv->seq = (iv->seq + 1) & 0xFFFF;
    iv->data = iv->slot_bits | iv->seq;
    put_ring_header(req, len, (uint32_t)iv->seq);
    if (len)
        memcpy(req + FF_RING_HSIZE, payload, len);
    int rc = rma_sync(e, 0, iv->lmr, 0, FF_RING_HSIZE + len, iv->peer, iv->raddr, iv->rkey, 1, iv->data, timeout_us);
    if (rc)
        return rc;
    rc = wait_event(e, 1, iv->data, &iv->ev, wait_us);
    if (rc)
        return rc;
    if (iv->ev.kind != FF_EV_DATA)
        return FF_INVOKE_MORE;
    const char *h = iv->res->buf;
    if (get_le32(h + 24) != 0) /* flags: bulk or error */
        return FF_INVOKE_MORE;
    return (int64_t)get_le64(h);
}
