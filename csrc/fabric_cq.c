/* slurm-faas libfabric RMA helpers: operations in flight, the completion
 * queue, and the events it yields (remote completion data, errors), queued
 * for ff_wait and the hot paths (see fabric.h). */
#define _GNU_SOURCE
#include "fabric_internal.h"

#include <stdio.h>
#include <stdlib.h>

static void push_event(ff_ep *e, int kind, int err, uint64_t data, uint64_t tag)
{
    if (e->evq_len == FF_EVQ) { /* cannot happen with one request per slot; keep newest errors */
        memmove(e->evq, e->evq + 1, sizeof e->evq[0] * (FF_EVQ - 1));
        e->evq_len--;
    }
    struct ff_event *ev = &e->evq[e->evq_len++];
    ev->kind = kind;
    ev->err = err;
    ev->data = data;
    ev->tag = tag;
}

int post_recv(ff_ep *e, int i)
{
    void *desc = e->recv_mr ? fi_mr_desc(e->recv_mr) : NULL;
    ssize_t rc;
    do
        rc = fi_recv(e->ep, &e->recv_buf[i], sizeof e->recv_buf[i], desc, FI_ADDR_UNSPEC, &e->recv_op[i].ctx);
    while (rc == -FI_EAGAIN && fi_cq_read(e->cq, NULL, 0) >= -FI_EAGAIN);
    return (int)rc;
}

struct ff_op *op_new(ff_ep *e, int kind)
{
    struct ff_op *op = e->spare;
    if (op) {
        e->spare = NULL;
        memset(op, 0, sizeof *op);
    } else if (!(op = calloc(1, sizeof *op))) {
        return NULL;
    }
    op->kind = kind;
    return op;
}

void op_free(ff_ep *e, struct ff_op *op)
{
    if (!e->spare)
        e->spare = op;
    else
        free(op);
}

static void op_done(ff_ep *e, struct ff_op *op, int err)
{
    if (op->kind == OP_SYNC) {
        if (err && !op->err)
            op->err = err;
        if (op->pending)
            op->pending--;
        if (op->orphan && op->pending == 0) { /* unlink and free */
            struct ff_op **pp = &e->orphans;
            while (*pp && *pp != op)
                pp = &(*pp)->next_orphan;
            if (*pp)
                *pp = op->next_orphan;
            free(op);
        }
    } else if (op->kind == OP_ASYNC) {
        if (err)
            push_event(e, FF_EV_TX_ERROR, err, 0, op->tag);
        op_free(e, op);
    }
}

static int is_recv_op(ff_ep *e, void *ctx)
{
    return ctx >= (void *)&e->recv_op[0] && ctx < (void *)&e->recv_op[FF_NRECV];
}

/* Read the completion queue once. Returns >0 if something happened, 0 if the
 * queue was empty, <0 on a fatal error. */
int poll_once(ff_ep *e)
{
    struct fi_cq_data_entry ent[16];
    ssize_t n = fi_cq_read(e->cq, ent, 16);
    if (n == -FI_EAGAIN)
        return 0;
    if (n == -FI_EAVAIL) {
        struct fi_cq_err_entry ee;
        memset(&ee, 0, sizeof ee);
        ssize_t r = fi_cq_readerr(e->cq, &ee, 0);
        if (r < 0)
            return r == -FI_EAGAIN ? 0 : fail(e, "fi_cq_readerr", (int)r);
        int err = ee.err ? ee.err : FI_EOTHER;
        snprintf(e->err, sizeof e->err, "completion error: %s (provider: %s)", fi_strerror(err),
                 fi_cq_strerror(e->cq, ee.prov_errno, ee.err_data, NULL, 0));
        if (ee.op_context && is_recv_op(e, ee.op_context)) {
            if (err != FI_ECANCELED)
                post_recv(e, (int)((struct ff_op *)ee.op_context - e->recv_op));
            push_event(e, FF_EV_RX_ERROR, err, 0, 0);
        } else if (ee.op_context) {
            op_done(e, (struct ff_op *)ee.op_context, err);
        } else {
            push_event(e, FF_EV_RX_ERROR, err, 0, 0);
        }
        return 1;
    }
    if (n < 0)
        return fail(e, "fi_cq_read", (int)n);
    for (ssize_t i = 0; i < n; i++) {
        void *ctx = ent[i].op_context;
        if (ent[i].flags & FI_REMOTE_CQ_DATA) {
            push_event(e, FF_EV_DATA, 0, ent[i].data, 0);
            if (ctx && is_recv_op(e, ctx))
                post_recv(e, (int)((struct ff_op *)ctx - e->recv_op));
        } else if (ctx && is_recv_op(e, ctx)) {
            int k = (int)((struct ff_op *)ctx - e->recv_op);
            push_event(e, FF_EV_DATA, 0, e->recv_buf[k], 0);
            post_recv(e, k);
        } else if (ctx) {
            op_done(e, (struct ff_op *)ctx, 0);
        }
    }
    return (int)n;
}

static int take_event(ff_ep *e, int match, uint64_t data, struct ff_event *ev)
{
    for (unsigned i = 0; i < e->evq_len; i++) {
        struct ff_event *q = &e->evq[i];
        if (!match || q->kind != FF_EV_DATA || q->data == data) {
            *ev = *q;
            memmove(q, q + 1, sizeof *q * (e->evq_len - i - 1));
            e->evq_len--;
            return 1;
        }
    }
    return 0;
}

int wait_event_until(ff_ep *e, int match, uint64_t data, struct ff_event *ev, int64_t deadline)
{
    unsigned spins = 0;
    memset(ev, 0, sizeof *ev);
    for (;;) {
        if (e->evq_len && take_event(e, match, data, ev))
            return 0;
        int p = poll_once(e);
        if (p < 0)
            return p;
        if (p == 0 && (++spins & 63) == 0 && expired(deadline)) {
            ev->kind = FF_EV_NONE;
            return 0;
        }
    }
}

int wait_event(ff_ep *e, int match, uint64_t data, struct ff_event *ev, int64_t timeout_us)
{
    return wait_event_until(e, match, data, ev, deadline_of(timeout_us));
}

int ff_wait(ff_ep *e, struct ff_event *ev, int64_t timeout_us) { return wait_event(e, 0, 0, ev, timeout_us); }

int ff_wait_match(ff_ep *e, uint64_t data, struct ff_event *ev, int64_t timeout_us)
{
    return wait_event(e, 1, data, ev, timeout_us);
}
