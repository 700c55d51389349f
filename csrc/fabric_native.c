/* slurm-faas libfabric RMA helpers: native functions (csrc/faas_native.h),
 * called under a mutex from any thread, and the executor's RMA hot path that
 * serves them straight from the request ring (see fabric.h). */
#define _GNU_SOURCE
#include "fabric_internal.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

typedef int (*native_fn)(const void *in, size_t in_len, void *out, size_t out_cap, size_t *out_len);

struct ff_native {
    void *dl;    /* NULL: a Python handler (ff_native_python) */
    native_fn fn;
    void *py;    /* the Python handler's handle, passed to ff_py_call */
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

int ff_native_python(void *handle, ff_native **out)
{
    ff_native *nf = calloc(1, sizeof *nf);
    if (!nf)
        return -FI_ENOMEM;
    nf->py = handle;
    pthread_mutex_init(&nf->lock, NULL);
    *out = nf;
    return 0;
}

void ff_native_close(ff_native *nf)
{
    if (!nf)
        return;
    pthread_mutex_destroy(&nf->lock);
    if (nf->dl)
        dlclose(nf->dl);
    free(nf);
}

int ff_native_call(ff_native *nf, const void *in, uint64_t in_len, void *out, uint64_t out_cap, uint64_t *out_len)
{
    if (!nf->dl) { /* Python: its handler serializes itself (and takes the GIL) */
        *out_len = 0;
        return ff_py_call(nf->py, in, in_len, out, out_cap, out_len);
    }
    size_t olen = 0;
    pthread_mutex_lock(&nf->lock);
    int rc = nf->fn(in, (size_t)in_len, out, (size_t)out_cap, &olen);
    pthread_mutex_unlock(&nf->lock);
    *out_len = olen;
    return rc;
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
        if ((flags & (FF_RING_BULK | FF_RING_GATHER)) || length > slot_size - FF_RING_HSIZE)
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
        put_ring_header(rep, olen, seq);
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
