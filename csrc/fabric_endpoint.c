/* slurm-faas libfabric RMA helpers: opening and closing an endpoint (fabric,
 * domain, address vector, completion queue, remote-operation counter), its
 * peers' addresses, and error text (see fabric.h). */
#define _GNU_SOURCE
#include "fabric_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

const char *ff_strerror(int err) { return fi_strerror(err < 0 ? -err : err); }
const char *ff_last_error(ff_ep *e) { return e ? e->err : ""; }

int fail(ff_ep *e, const char *what, int rc)
{
    if (e)
        snprintf(e->err, sizeof e->err, "%s: %s", what, fi_strerror(rc < 0 ? -rc : rc));
    return rc < 0 ? rc : -rc;
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
    /* Where the provider takes the keys we request (no FI_MR_PROV_KEY: tcp;ofi_rxm here), a
     * key is all that guards a region from anyone who reaches the endpoint: start from an
     * unguessable one, not 1 (remote memory, docs/fabric.md). */
    if (!(mrm & FI_MR_PROV_KEY) && fi->domain_attr->mr_key_size >= sizeof(uint64_t)) {
        uint64_t r;
        if (getrandom(&r, sizeof r, 0) == (ssize_t)sizeof r)
            e->next_key = (r >> 2) | 1; /* room below 2^64 for every key this endpoint registers */
    }
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
