/* Raw C libfabric baselines for bench/bench_fabric.py: no slurm-faas code.
 *
 *   fabric_raw PROVIDER DOMAIN MODE SIZE ITERS
 *     MODE pingpong: client fi_writedata SIZE bytes into the server's buffer,
 *                    the server (busy-polling) answers with fi_writedata SIZE bytes
 *     MODE write:    client fi_writedata SIZE bytes, server answers 0 bytes
 *     MODE read:     client fi_read SIZE bytes from the server's buffer (server polls)
 *   Prints: "<mode> <size> median_us=<m> mean_us=<a>".
 *
 * Two processes: fork() before libfabric is touched; endpoint names, addresses
 * and keys go over pipes. Build: cc -O2 -o fabric_raw fabric_raw.c -lfabric
 */
#define _GNU_SOURCE
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int _rc = (int)(x);                                                                        \
        if (_rc) {                                                                                 \
            fprintf(stderr, "%s: %s\n", #x, fi_strerror(-_rc));                                  \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

struct side {
    struct fi_info *fi;
    struct fid_fabric *fab;
    struct fid_domain *dom;
    struct fid_av *av;
    struct fid_cq *cq;
    struct fid_ep *ep;
    struct fid_mr *mr;
    char *buf;
    uint64_t base, key;
};
struct xchg {
    char name[64];
    size_t namelen;
    uint64_t base, key;
};

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void setup(struct side *s, const char *prov, const char *domain, size_t size)
{
    struct fi_info *h = fi_allocinfo(), *fi;
    h->ep_attr->type = FI_EP_RDM;
    h->caps = FI_MSG | FI_RMA;
    h->mode = FI_CONTEXT | FI_CONTEXT2;
    h->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    h->fabric_attr->prov_name = strdup(strcmp(prov, "tcp") ? prov : "tcp;ofi_rxm");
    CHECK(fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, h, &s->fi));
    for (fi = s->fi; fi && *domain; fi = fi->next)
        if (!strcmp(fi->domain_attr->name, domain) || !strcmp(fi->fabric_attr->name, domain))
            break;
    if (!fi)
        fi = s->fi;
    CHECK(fi_fabric(fi->fabric_attr, &s->fab, NULL));
    CHECK(fi_domain(s->fab, fi, &s->dom, NULL));
    struct fi_av_attr av = {.type = FI_AV_TABLE};
    CHECK(fi_av_open(s->dom, &av, &s->av, NULL));
    struct fi_cq_attr cq = {.format = FI_CQ_FORMAT_DATA, .wait_obj = FI_WAIT_NONE, .size = 1024};
    CHECK(fi_cq_open(s->dom, &cq, &s->cq, NULL));
    /* shm: a region left by a SIGKILLed process with our pid makes fi_enable fail with
     * -FI_EBUSY (shm then removes it): retry with a fresh endpoint, as csrc/fabric.c does. */
    for (int attempt = 0;; attempt++) {
        CHECK(fi_endpoint(s->dom, fi, &s->ep, NULL));
        CHECK(fi_ep_bind(s->ep, &s->av->fid, 0));
        CHECK(fi_ep_bind(s->ep, &s->cq->fid, FI_TRANSMIT | FI_RECV));
        int rc = fi_enable(s->ep);
        if (rc == -FI_EBUSY && attempt < 4) {
            fi_close(&s->ep->fid);
            continue;
        }
        CHECK(rc);
        break;
    }
    s->buf = aligned_alloc(4096, (size + 4095) / 4096 * 4096 + 4096);
    memset(s->buf, 1, size + 1);
    CHECK(fi_mr_reg(s->dom, s->buf, size + 1, FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE, 0, 7, 0,
                    &s->mr, NULL));
    s->key = fi_mr_key(s->mr);
    s->base = (fi->domain_attr->mr_mode & FI_MR_VIRT_ADDR) ? (uint64_t)(uintptr_t)s->buf : 0;
}

/* Busy-poll until one completion; returns its flags. */
static uint64_t poll1(struct side *s)
{
    struct fi_cq_data_entry e;
    for (;;) {
        ssize_t n = fi_cq_read(s->cq, &e, 1);
        if (n == 1)
            return e.flags;
        if (n == -FI_EAVAIL) {
            struct fi_cq_err_entry ee = {0};
            fi_cq_readerr(s->cq, &ee, 0);
            fprintf(stderr, "completion error: %s\n", fi_strerror(ee.err));
            exit(3);
        }
    }
}

static void writedata(struct side *s, size_t len, fi_addr_t peer, uint64_t raddr, uint64_t rkey, int with_data)
{
    ssize_t rc;
    void *desc = fi_mr_desc(s->mr);
    while ((rc = with_data ? fi_writedata(s->ep, s->buf, len, desc, 1, peer, raddr, rkey, NULL)
                           : fi_write(s->ep, s->buf, len, desc, peer, raddr, rkey, NULL)) == -FI_EAGAIN)
        fi_cq_read(s->cq, NULL, 0);
    CHECK(rc);
}

/* Wait for the remote completion data and the local completion of our write (either order). */
static void wait_both(struct side *s)
{
    int remote = 0, local = 0;
    while (!remote || !local) {
        uint64_t f = poll1(s);
        if (f & FI_REMOTE_CQ_DATA)
            remote = 1;
        else
            local = 1;
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s PROVIDER DOMAIN pingpong|write|read SIZE ITERS\n", argv[0]);
        return 1;
    }
    const char *prov = argv[1], *domain = argv[2], *mode = argv[3];
    size_t size = strtoull(argv[4], NULL, 0);
    int iters = atoi(argv[5]), warm = iters / 10 + 5;
    int up[2], down[2];
    if (pipe(up) || pipe(down))
        return 1;
    pid_t pid = fork();
    if (pid == 0)
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* the server must not outlive a client that failed */
    struct side s;
    memset(&s, 0, sizeof s);
    setup(&s, prov, domain, size);
    struct xchg me = {.namelen = sizeof me.name, .base = s.base, .key = s.key}, peerx;
    CHECK(fi_getname(&s.ep->fid, me.name, &me.namelen));
    int wfd = pid == 0 ? up[1] : down[1], rfd = pid == 0 ? down[0] : up[0];
    if (write(wfd, &me, sizeof me) != sizeof me || read(rfd, &peerx, sizeof peerx) != sizeof peerx)
        return 1;
    fi_addr_t peer;
    if (fi_av_insert(s.av, peerx.name, 1, &peer, 0, NULL) != 1)
        return 1;
    size_t reply = strcmp(mode, "pingpong") == 0 ? size : 0;
    if (pid == 0) { /* server */
        if (strcmp(mode, "read") == 0) {
            char c;
            /* serve reads by polling until the client says stop */
            int fl = 1;
            (void)fl;
            for (;;) {
                fi_cq_read(s.cq, NULL, 0);
                struct timespec z = {0, 0};
                (void)z;
                fd_set fds; /* cheap check every 1024 polls */
                static unsigned k;
                if ((++k & 1023) == 0) {
                    struct timeval tv = {0, 0};
                    FD_ZERO(&fds);
                    FD_SET(rfd, &fds);
                    if (select(rfd + 1, &fds, NULL, NULL, &tv) > 0 && read(rfd, &c, 1) >= 0)
                        break;
                }
            }
        } else {
            for (int i = 0; i < warm + iters; i++) {
                while (!(poll1(&s) & FI_REMOTE_CQ_DATA))
                    ;
                writedata(&s, reply, peer, peerx.base, peerx.key, 1);
                while (poll1(&s) & FI_REMOTE_CQ_DATA) /* our write's local completion */
                    ;
            }
        }
        _exit(0);
    }
    double *t = calloc(iters, sizeof *t);
    for (int i = 0; i < warm + iters; i++) {
        double t0 = now_us();
        if (strcmp(mode, "read") == 0) {
            void *desc = fi_mr_desc(s.mr);
            ssize_t rc;
            while ((rc = fi_read(s.ep, s.buf, size, desc, peer, peerx.base, peerx.key, NULL)) == -FI_EAGAIN)
                fi_cq_read(s.cq, NULL, 0);
            CHECK(rc);
            poll1(&s);
        } else {
            writedata(&s, size, peer, peerx.base, peerx.key, 1);
            wait_both(&s);
        }
        if (i >= warm)
            t[i - warm] = now_us() - t0;
    }
    if (strcmp(mode, "read") == 0 && write(wfd, "x", 1) != 1)
        return 1;
    waitpid(pid, NULL, 0);
    double sum = 0;
    for (int i = 0; i < iters; i++)
        sum += t[i];
    qsort(t, iters, sizeof *t, cmp);
    printf("%s %zu median_us=%.2f mean_us=%.2f\n", mode, size, t[iters / 2], sum / iters);
    return 0;
}
