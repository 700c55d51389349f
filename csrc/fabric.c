/* slurm-faas libfabric RMA helpers (see fabric.h). */
#define _GNU_SOURCE
#include "fabric.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

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
    int use_cqdata, saw_ordered, virt_addr, mr_endpoint, posted_recvs;
    uint64_t next_key;
    struct ff_op recv_op[FF_NRECV];
    uint64_t recv_buf[FF_NRECV];
    struct fid_mr *recv_mr;
    struct ff_event evq[FF_EVQ];
    unsigned evq_len;
    struct ff_op *orphans;
    char err[320];
};

static atomic_long mr_live;

const char *ff_strerror(int err) { return fi_strerror(err < 0 ? -err : err); }
const char *ff_last_error(ff_ep *e) { return e ? e->err : ""; }
long ff_mr_live(void) { return atomic_load(&mr_live); }
uint64_t ff_load64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
void ff_store64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }

static int fail(ff_ep *e, const char *what, int rc)
{
    if (e)
        snprintf(e->err, sizeof e->err, "%s: %s", what, fi_strerror(rc < 0 ? -rc : rc));
    return rc < 0 ? rc : -rc;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int expired(int64_t deadline) { return deadline >= 0 && now_us() >= deadline; }
static int64_t deadline_of(int64_t timeout_us) { return timeout_us < 0 ? -1 : now_us() + timeout_us; }

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

static int post_recv(ff_ep *e, int i)
{
    void *desc = e->recv_mr ? fi_mr_desc(e->recv_mr) : NULL;
    ssize_t rc;
    do
        rc = fi_recv(e->ep, &e->recv_buf[i], sizeof e->recv_buf[i], desc, FI_ADDR_UNSPEC, &e->recv_op[i].ctx);
    while (rc == -FI_EAGAIN && fi_cq_read(e->cq, NULL, 0) >= -FI_EAGAIN);
    return (int)rc;
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
        free(op);
    }
}

static int is_recv_op(ff_ep *e, void *ctx)
{
    return ctx >= (void *)&e->recv_op[0] && ctx < (void *)&e->recv_op[FF_NRECV];
}

/* Read the completion queue once. Returns >0 if something happened, 0 if the
 * queue was empty, <0 on a fatal error. */
static int poll_once(ff_ep *e)
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

int ff_ep_open(const char *provider, const char *domain, int no_cqdata, ff_ep **out)
{
    *out = NULL;
    ff_ep *e = calloc(1, sizeof *e);
    if (!e)
        return -FI_ENOMEM;
    struct fi_info *hints = fi_allocinfo();
    if (!hints) {
        free(e);
        return -FI_ENOMEM;
    }
    hints->ep_attr->type = FI_EP_RDM;
    hints->caps = FI_MSG | FI_RMA;
    hints->mode = FI_CONTEXT | FI_CONTEXT2 | FI_RX_CQ_DATA;
    /* Everything we can live with; the provider keeps the bits it needs. */
    hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY |
                                  FI_MR_ENDPOINT;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    hints->tx_attr->msg_order = FI_ORDER_SAW;
    if (provider && *provider)
        hints->fabric_attr->prov_name = strdup(strcmp(provider, "tcp") == 0 ? "tcp;ofi_rxm" : provider);
    int rc = fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &e->info);
    if (rc == -FI_ENODATA) { /* retry without the optional ordering request */
        hints->tx_attr->msg_order = 0;
        rc = fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &e->info);
    }
    fi_freeinfo(hints);
    if (rc) {
        snprintf(e->err, sizeof e->err, "fi_getinfo(provider=%s, domain=%s): %s", provider ? provider : "*",
                 domain ? domain : "*", fi_strerror(-rc));
        *out = e; /* the caller reads the message, then closes */
        return rc;
    }
    /* Utility providers (ofi_rxm) ignore the domain name in hints: pick the
     * first entry whose domain or fabric name is the configured one. */
    struct fi_info *fi = e->info;
    if (domain && *domain) {
        while (fi && strcmp(fi->domain_attr->name, domain) && strcmp(fi->fabric_attr->name, domain))
            fi = fi->next;
        if (!fi) {
            *out = e;
            snprintf(e->err, sizeof e->err, "provider %s has no domain or fabric named %s",
                     e->info->fabric_attr->prov_name, domain);
            return -FI_ENODATA;
        }
        fi = fi_dupinfo(fi);
        fi_freeinfo(e->info);
        e->info = fi;
    }
    uint64_t mrm = fi->domain_attr->mr_mode;
    if (mrm & FI_MR_RAW) {
        *out = e;
        return fail(e, "provider needs raw memory keys (FI_MR_RAW), not supported", -FI_ENOSYS);
    }
    e->virt_addr = !!(mrm & FI_MR_VIRT_ADDR);
    e->mr_endpoint = !!(mrm & FI_MR_ENDPOINT);
    e->use_cqdata = fi->domain_attr->cq_data_size >= 4 && !no_cqdata;
    e->saw_ordered = !!(fi->tx_attr->msg_order & FI_ORDER_SAW);
    e->next_key = 1;
    *out = e;

    if ((rc = fi_fabric(fi->fabric_attr, &e->fabric, NULL)))
        return fail(e, "fi_fabric", rc);
    if ((rc = fi_domain(e->fabric, fi, &e->domain, NULL)))
        return fail(e, "fi_domain", rc);
    struct fi_av_attr av = {.type = FI_AV_TABLE};
    if ((rc = fi_av_open(e->domain, &av, &e->av, NULL)))
        return fail(e, "fi_av_open", rc);
    struct fi_cq_attr cq = {.format = FI_CQ_FORMAT_DATA, .wait_obj = FI_WAIT_NONE, .size = 4096};
    if ((rc = fi_cq_open(e->domain, &cq, &e->cq, NULL)))
        return fail(e, "fi_cq_open", rc);
    if ((rc = fi_endpoint(e->domain, fi, &e->ep, NULL)))
        return fail(e, "fi_endpoint", rc);
    if ((rc = fi_ep_bind(e->ep, &e->av->fid, 0)))
        return fail(e, "fi_ep_bind(av)", rc);
    if ((rc = fi_ep_bind(e->ep, &e->cq->fid, FI_TRANSMIT | FI_RECV)))
        return fail(e, "fi_ep_bind(cq)", rc);
    if ((rc = fi_enable(e->ep)))
        return fail(e, "fi_enable", rc);
    if (mrm & FI_MR_LOCAL) {
        if ((rc = fi_mr_reg(e->domain, e->recv_buf, sizeof e->recv_buf, FI_RECV, 0, e->next_key++, 0,
                            &e->recv_mr, NULL)))
            return fail(e, "fi_mr_reg(receive buffers)", rc);
        if (e->mr_endpoint && ((rc = fi_mr_bind(e->recv_mr, &e->ep->fid, 0)) || (rc = fi_mr_enable(e->recv_mr))))
            return fail(e, "fi_mr_bind(receive buffers)", rc);
    }
    for (int i = 0; i < FF_NRECV; i++) {
        e->recv_op[i].kind = OP_RECV;
        if ((rc = post_recv(e, i)))
            return fail(e, "fi_recv", rc);
    }
    e->posted_recvs = 1;
    return 0;
}

void ff_ep_shutdown(ff_ep *e)
{
    if (e && e->ep) {
        fi_close(&e->ep->fid);
        e->ep = NULL;
    }
}

void ff_ep_close(ff_ep *e)
{
    if (!e)
        return;
    ff_ep_shutdown(e);
    if (e->recv_mr)
        fi_close(&e->recv_mr->fid);
    if (e->cq)
        fi_close(&e->cq->fid);
    if (e->av)
        fi_close(&e->av->fid);
    if (e->domain)
        fi_close(&e->domain->fid);
    if (e->fabric)
        fi_close(&e->fabric->fid);
    if (e->info)
        fi_freeinfo(e->info);
    while (e->orphans) {
        struct ff_op *n = e->orphans->next_orphan;
        free(e->orphans);
        e->orphans = n;
    }
    free(e);
}

int ff_ep_describe(ff_ep *e, struct ff_desc *d)
{
    memset(d, 0, sizeof *d);
    if (!e->info)
        return -FI_EINVAL;
    snprintf(d->provider, sizeof d->provider, "%s", e->info->fabric_attr->prov_name);
    snprintf(d->fabric, sizeof d->fabric, "%s", e->info->fabric_attr->name);
    snprintf(d->domain, sizeof d->domain, "%s", e->info->domain_attr->name);
    d->mr_mode = e->info->domain_attr->mr_mode;
    d->cq_data_size = e->info->domain_attr->cq_data_size;
    d->inject_size = e->info->tx_attr->inject_size;
    d->use_cqdata = e->use_cqdata;
    d->virt_addr = e->virt_addr;
    size_t len = 0;
    fi_getname(&e->ep->fid, NULL, &len);
    d->addrlen = len;
    return 0;
}

int ff_ep_name(ff_ep *e, void *buf, uint64_t *len)
{
    size_t l = (size_t)*len;
    int rc = fi_getname(&e->ep->fid, buf, &l);
    *len = l;
    return rc ? fail(e, "fi_getname", rc) : 0;
}

int ff_av_insert(ff_ep *e, const void *name, uint64_t *peer)
{
    fi_addr_t a = FI_ADDR_UNSPEC;
    int rc = fi_av_insert(e->av, name, 1, &a, 0, NULL);
    if (rc != 1)
        return fail(e, "fi_av_insert", rc < 0 ? rc : -FI_EADDRNOTAVAIL);
    *peer = a;
    return 0;
}

int ff_av_remove(ff_ep *e, uint64_t peer)
{
    fi_addr_t a = peer;
    int rc = fi_av_remove(e->av, &a, 1, 0);
    return rc ? fail(e, "fi_av_remove", rc) : 0;
}

int ff_mr_reg(ff_ep *e, void *buf, uint64_t len, uint64_t access, ff_mr **out)
{
    *out = NULL;
    ff_mr *m = calloc(1, sizeof *m);
    if (!m)
        return fail(e, "ff_mr_reg", -FI_ENOMEM);
    static char empty[8]; /* a zero-length region still needs an address */
    if (len == 0)
        buf = empty;
    uint64_t acc = FI_READ | FI_WRITE | FI_SEND | FI_RECV;
    if (access == FF_ACCESS_REMOTE)
        acc |= FI_REMOTE_READ | FI_REMOTE_WRITE;
    int rc = fi_mr_reg(e->domain, buf, len ? len : 1, acc, 0, e->next_key++, 0, &m->mr, NULL);
    if (rc) {
        free(m);
        return fail(e, "fi_mr_reg", rc);
    }
    if (e->mr_endpoint && ((rc = fi_mr_bind(m->mr, &e->ep->fid, 0)) || (rc = fi_mr_enable(m->mr)))) {
        fi_close(&m->mr->fid);
        free(m);
        return fail(e, "fi_mr_bind", rc);
    }
    m->buf = buf;
    m->desc = fi_mr_desc(m->mr);
    m->key = fi_mr_key(m->mr);
    m->base = e->virt_addr ? (uint64_t)(uintptr_t)buf : 0;
    atomic_fetch_add(&mr_live, 1);
    *out = m;
    return 0;
}

int ff_mr_close(ff_mr *m)
{
    if (!m)
        return 0;
    int rc = fi_close(&m->mr->fid);
    free(m);
    atomic_fetch_sub(&mr_live, 1);
    return rc;
}

uint64_t ff_mr_key(ff_mr *m) { return m->key; }
uint64_t ff_mr_base(ff_mr *m) { return m->base; }

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
    for (;;) {
        rc = is_read ? fi_readmsg(e->ep, &msg, flags) : fi_writemsg(e->ep, &msg, flags);
        if (rc != -FI_EAGAIN)
            break;
        int p = poll_once(e);
        if (p < 0)
            return p;
        if (expired(deadline))
            return fail(e, is_read ? "fi_read: queue full until the timeout" : "fi_write: queue full until the timeout",
                        -FI_ETIMEDOUT);
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
    for (;;) {
        rc = fi_inject(e->ep, &data, sizeof data, peer);
        if (rc != -FI_EAGAIN)
            break;
        int p = poll_once(e);
        if (p < 0)
            return p;
        if (expired(deadline))
            return fail(e, "fi_inject: queue full until the timeout", -FI_ETIMEDOUT);
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
    free(op);
    if (err)
        return -err; /* e->err already holds the completion error text */
    return 0;
}

static int rma_sync(ff_ep *e, int is_read, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
                    uint64_t raddr, uint64_t rkey, int with_data, uint64_t data, int64_t timeout_us)
{
    int64_t deadline = deadline_of(timeout_us);
    struct ff_op *op = calloc(1, sizeof *op);
    if (!op)
        return fail(e, "rma", -FI_ENOMEM);
    op->kind = OP_SYNC;
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
        op = calloc(1, sizeof *op);
        if (!op)
            return fail(e, "rma", -FI_ENOMEM);
        op->kind = OP_SYNC;
    }
    if (!rc)
        rc = post_rma(e, is_read, lmr, loff + off, len - off, peer, raddr + off, rkey, with_data && !signal, data,
                      op, deadline);
    if (rc && op->pending == 0) {
        free(op);
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
    struct ff_op *op = calloc(1, sizeof *op);
    if (!op)
        return fail(e, "ff_post_write", -FI_ENOMEM);
    op->kind = OP_ASYNC;
    op->tag = tag;
    int rc = post_rma(e, 0, lmr, loff, len, peer, raddr, rkey, 1, data, op, deadline_of(timeout_us));
    if (rc)
        free(op);
    return rc;
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

static int wait_event(ff_ep *e, int match, uint64_t data, struct ff_event *ev, int64_t timeout_us)
{
    int64_t deadline = deadline_of(timeout_us);
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

int ff_wait(ff_ep *e, struct ff_event *ev, int64_t timeout_us) { return wait_event(e, 0, 0, ev, timeout_us); }

int ff_wait_match(ff_ep *e, uint64_t data, struct ff_event *ev, int64_t timeout_us)
{
    return wait_event(e, 1, data, ev, timeout_us);
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

int ff_reply_wait(ff_ep *e, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer, uint64_t raddr,
                  uint64_t rkey, uint64_t data, uint64_t tag, struct ff_event *ev, int64_t timeout_us)
{
    int rc = ff_post_write(e, lmr, loff, len, peer, raddr, rkey, data, tag, timeout_us);
    if (rc) { /* a failed reply is this client's problem, not the executor's */
        memset(ev, 0, sizeof *ev);
        ev->kind = FF_EV_TX_ERROR;
        ev->err = -rc;
        ev->tag = tag;
        return 0;
    }
    return wait_event(e, 0, 0, ev, timeout_us);
}

int ff_progress_loop(ff_ep *e, volatile int *stop, int64_t spin_us, int64_t nap_us)
{
    int64_t last = now_us();
    unsigned spins = 0;
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        int p = poll_once(e);
        if (p < 0)
            return p;
        if (p > 0) {
            last = now_us();
            continue;
        }
        if ((++spins & 255) == 0 && nap_us > 0 && now_us() - last > spin_us) {
            struct timespec ts = {.tv_sec = nap_us / 1000000, .tv_nsec = (nap_us % 1000000) * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return 0;
}
