/* slurm-faas libfabric RMA helpers: memory registration, and atomic 64-bit
 * words in shared memory (see fabric.h). */
#define _GNU_SOURCE
#include "fabric_internal.h"

#include <stdlib.h>

static atomic_long mr_live;

long ff_mr_live(void) { return atomic_load(&mr_live); }
uint64_t ff_load64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
void ff_store64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }

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
