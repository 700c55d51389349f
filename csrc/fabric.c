/* slurm-faas libfabric RMA helpers (see fabric.h). */
#define _GNU_SOURCE
#include "fabric.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
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
#define FF_FIRST_NAP_US 20      /* the progress loop's first nap once idle; doubles to nap_us */
#define FF_WORK_POLL_NS 3000    /* a poll this long did work (idle: < 1 us, 1-3 us cold after a nap) */
#define FF_WORK_SPIN_NS 200000  /* ... and keeps the loop spinning this long */
#define FF_WORK_RUN_NS 100000   /* work polls closer than this are a transfer, not noise */
#define FF_MAX_SPIN_NS 20000000 /* the longest spin one use buys (see ff_progress_loop) */

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

static struct ff_op *op_new(ff_ep *e, int kind)
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

static void op_free(ff_ep *e, struct ff_op *op)
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

/* The shm provider names its region after the process id (/dev/shm/<pid>:<d>:<e>).
 * A process killed with SIGKILL leaves its region behind, and a later process that
 * gets the same pid fails to enable its endpoint with -FI_EBUSY: shm then removes
 * the stale file, so a fresh endpoint works (the dead process may have left several). */
#define FF_SHM_STALE_RETRIES 4

int ff_ep_open(const char *provider, const char *domain, int flags, ff_ep **out)
{
    *out = NULL;
    int no_cqdata = !!(flags & FF_OPEN_NO_CQDATA), serve = !!(flags & FF_OPEN_SERVE);
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
    int rc = -FI_ENODATA;
    if (serve) { /* a counter of remote operations tells the progress loop it is used */
        hints->caps |= FI_RMA_EVENT;
        hints->domain_attr->mr_mode |= FI_MR_RMA_EVENT;
        rc = fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &e->info);
        hints->caps &= ~FI_RMA_EVENT;
        hints->domain_attr->mr_mode &= ~FI_MR_RMA_EVENT;
    }
    if (rc == -FI_ENODATA)
        rc = fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &e->info);
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
    int want_cntr = serve && (fi->caps & FI_RMA_EVENT);
    struct fi_cq_attr cq = {.format = FI_CQ_FORMAT_DATA, .wait_obj = FI_WAIT_NONE, .size = 4096};
    if ((rc = fi_cq_open(e->domain, &cq, &e->cq, NULL)))
        return fail(e, "fi_cq_open", rc);
    if (want_cntr) {
        struct fi_cntr_attr ca = {.events = FI_CNTR_EVENTS_COMP, .wait_obj = FI_WAIT_NONE};
        if ((rc = fi_cntr_open(e->domain, &ca, &e->rcntr, NULL)))
            return fail(e, "fi_cntr_open", rc);
        e->mr_rma_event = !!(fi->domain_attr->mr_mode & FI_MR_RMA_EVENT);
    }
    for (int attempt = 0;; attempt++) {
        if ((rc = fi_endpoint(e->domain, fi, &e->ep, NULL)))
            return fail(e, "fi_endpoint", rc);
        if ((rc = fi_ep_bind(e->ep, &e->av->fid, 0)))
            return fail(e, "fi_ep_bind(av)", rc);
        if ((rc = fi_ep_bind(e->ep, &e->cq->fid, FI_TRANSMIT | FI_RECV)))
            return fail(e, "fi_ep_bind(cq)", rc);
        if (e->rcntr && (rc = fi_ep_bind(e->ep, &e->rcntr->fid, FI_REMOTE_READ | FI_REMOTE_WRITE)))
            return fail(e, "fi_ep_bind(remote counter)", rc);
        rc = fi_enable(e->ep);
        if (rc == -FI_EBUSY && attempt < FF_SHM_STALE_RETRIES && strcmp(fi->fabric_attr->prov_name, "shm") == 0) {
            fi_close(&e->ep->fid); /* a fresh endpoint (the failed one cannot be enabled again) */
            e->ep = NULL;
            continue;
        }
        if (rc)
            return fail(e, "fi_enable", rc);
        break;
    }
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
    if (e->rcntr)
        fi_close(&e->rcntr->fid);
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
    free(e->spare);
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
    d->activity = e->rcntr ? FF_ACTIVITY_COUNTER : FF_ACTIVITY_POLL_TIME;
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
    if (e->mr_rma_event && access == FF_ACCESS_REMOTE &&
        ((rc = fi_mr_bind(m->mr, &e->rcntr->fid, FI_REMOTE_READ | FI_REMOTE_WRITE)) ||
         (!e->mr_endpoint && (rc = fi_mr_enable(m->mr))))) {
        fi_close(&m->mr->fid);
        free(m);
        return fail(e, "fi_mr_bind(remote counter)", rc);
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
    op_free(e, op);
    if (err)
        return -err; /* e->err already holds the completion error text */
    return 0;
}

static int rma_sync(ff_ep *e, int is_read, ff_mr *lmr, uint64_t loff, uint64_t len, uint64_t peer,
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

static int wait_event_until(ff_ep *e, int match, uint64_t data, struct ff_event *ev, int64_t deadline)
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

static int wait_event(ff_ep *e, int match, uint64_t data, struct ff_event *ev, int64_t timeout_us)
{
    return wait_event_until(e, match, data, ev, deadline_of(timeout_us));
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

static uint64_t get_le64(const char *p);
static uint32_t get_le32(const char *p);
static void put_le(char *p, uint64_t v, int n);

int64_t ff_invoke(struct ff_invoker *iv, const char *payload, uint64_t len)
{
    int64_t timeout_us = iv->timeout_us, wait_us = iv->wait_us;
    ff_ep *e = iv->ep;
    char *req = iv->lmr->buf;
    iv->seq = (iv->seq + 1) & 0xFFFF;
    iv->data = iv->slot_bits | iv->seq;
    put_le(req, len, 8);
    memset(req + 8, 0, 20);
    put_le(req + 28, iv->seq, 4);
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

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

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

/* -- native functions ------------------------------------------------------ */

typedef int (*native_fn)(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len);

struct ff_native {
    void *dl;
    native_fn fn;
    pthread_mutex_t lock;
};

int ff_native_open(const char *path, const char *symbol, ff_native **out, char *err, uint64_t errlen)
{
    *out = NULL;
    if (errlen)
        err[0] = 0;
    dlerror();
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *why = dlerror();
        if (errlen)
            snprintf(err, errlen, "%s", why ? why : "dlopen failed");
        return -FI_ENOENT;
    }
    dlerror();
    void *sym = dlsym(dl, symbol);
    const char *why = dlerror();
    if (why || !sym) {
        if (errlen)
            snprintf(err, errlen, "%s", why ? why : "symbol is NULL");
        dlclose(dl);
        return -FI_ENOSYS;
    }
    ff_native *nf = calloc(1, sizeof *nf);
    if (!nf) {
        dlclose(dl);
        return -FI_ENOMEM;
    }
    nf->dl = dl;
    *(void **)&nf->fn = sym; /* POSIX: object pointer to function pointer */
    pthread_mutex_init(&nf->lock, NULL);
    *out = nf;
    return 0;
}

void ff_native_close(ff_native *nf)
{
    if (!nf)
        return;
    pthread_mutex_destroy(&nf->lock);
    dlclose(nf->dl);
    free(nf);
}

int ff_native_call(ff_native *nf, const void *in, uint64_t in_len, void *out, uint64_t out_cap, uint64_t *out_len)
{
    size_t olen = 0;
    pthread_mutex_lock(&nf->lock);
    int rc = nf->fn(in, (size_t)in_len, out, (size_t)out_cap, &olen);
    pthread_mutex_unlock(&nf->lock);
    *out_len = olen;
    return rc;
}

static uint64_t get_le64(const char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | (unsigned char)p[i];
    return v;
}

static uint32_t get_le32(const char *p)
{
    return (uint32_t)(unsigned char)p[0] | (uint32_t)(unsigned char)p[1] << 8 |
           (uint32_t)(unsigned char)p[2] << 16 | (uint32_t)(unsigned char)p[3] << 24;
}

static void put_le(char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        p[i] = (char)(v & 0xff);
}

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

int ff_serve_native(ff_ep *e, ff_native *nf, ff_mr *ring, ff_mr *out, uint64_t slot_size, struct ff_slot *slots,
                    uint64_t nslots, int check_json, volatile int *attention, struct ff_event *ev,
                    int64_t timeout_us, uint64_t *served)
{
    int64_t deadline = deadline_of(timeout_us);
    for (unsigned n = 1;; n++) {
        if (__atomic_load_n(attention, __ATOMIC_ACQUIRE) || ((n & 63) == 0 && expired(deadline))) {
            memset(ev, 0, sizeof *ev);
            ev->kind = FF_EV_NONE;
            return 0;
        }
        int rc = wait_event_until(e, 0, 0, ev, deadline);
        if (rc || ev->kind != FF_EV_DATA)
            return rc;
        uint64_t slot = ev->data >> 16;
        if (slot >= nslots || !slots[slot].fast || __atomic_load_n(attention, __ATOMIC_ACQUIRE))
            return 0;
        struct ff_slot *s = &slots[slot];
        const char *req = ring->buf + slot * slot_size;
        uint64_t length = get_le64(req);
        uint32_t flags = get_le32(req + 24), seq = get_le32(req + 28);
        if ((flags & FF_RING_BULK) || length > slot_size - FF_RING_HSIZE)
            return 0;
        uint64_t cap = (s->rsize < slot_size ? s->rsize : slot_size) - FF_RING_HSIZE;
        char *rep = out->buf + slot * slot_size;
        uint64_t olen = 0;
        int frc = ff_native_call(nf, req + FF_RING_HSIZE, length, rep + FF_RING_HSIZE, cap, &olen);
        if (frc != 0 || olen > cap || (check_json && !ff_json_valid(rep + FF_RING_HSIZE, olen))) {
            ev->kind = FF_EV_NATIVE;
            ev->err = frc != 0 ? frc : olen > cap ? -1 : FF_NATIVE_NOT_JSON;
            ev->tag = olen;
            return 0;
        }
        put_le(rep, olen, 8);
        memset(rep + 8, 0, 16);
        put_le(rep + 24, 0, 4);
        put_le(rep + 28, seq, 4);
        (*served)++;
        int prc = ff_post_write(e, out, slot * slot_size, FF_RING_HSIZE + olen, s->peer, s->raddr, s->rkey,
                                ev->data, slot, 1000000);
        if (prc) { /* this client's problem: Python drops its lease */
            uint64_t data = ev->data;
            memset(ev, 0, sizeof *ev);
            ev->kind = FF_EV_TX_ERROR;
            ev->err = -prc;
            ev->tag = slot;
            ev->data = data;
            return 0;
        }
    }
}
