/* Raw C libfabric baselines for bench/bench_fabric.py: no slurm-faas code.
 *
 *   fabric_raw PROVIDER DOMAIN MODE SIZE ITERS
 *     MODE pingpong: client fi_writedata SIZE bytes into the server's buffer,
 *                    the server (busy-polling) answers with fi_writedata SIZE bytes
 *     MODE write:    client fi_writedata SIZE bytes, server answers 0 bytes
 *     MODE read:     client fi_read SIZE bytes from the server's buffer (server polls)
 *     MODE readpp:   SIZE bytes each way, each read by its receiver, as slurm-faas's bulk
 *                    path moves them (faas_runtime.rma): the client signals with a 32-byte
 *                    fi_writedata, the server fi_reads SIZE bytes from the client's buffer
 *                    and signals back (32 bytes), the client fi_reads SIZE bytes from the
 *                    server's buffer. Over tcp;ofi_rxm this is the faster way to move large
 *                    data (a read is one request and one stream; see bench/bench_hot_python.py)
 *   Prints: "<mode> <size> median_us=<m> mean_us=<a>".
 *
 * Two processes: fork() before libfabric is touched; endpoint names, addresses
 * and keys go over pipes. FABRIC_RAW_PIN=1 in the environment pins the server to
 * the last CPU of the affinity and the client to the others, as the hot-call
 * benchmarks place their executor (on the lent CPU) and client.
 * Build: cc -O2 -o fabric_raw fabric_raw.c -lfabric
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
#include <sched.h>
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
#define SIGNAL 32 /* readpp: the size of a signal (slurm-faas's ring header) */

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
    /* SIZE bytes of data, then SIGNAL bytes where readpp's signals land */
    s->buf = aligned_alloc(4096, (size + SIGNAL + 4095) / 4096 * 4096);
    memset(s->buf, 1, size + SIGNAL);
    CHECK(fi_mr_reg(s->dom, s->buf, size + SIGNAL, FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE, 0, 7, 0,
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

/* readpp: a signal arrives (remote CQ data) possibly while we wait for our own
 * operations; count them so that none is lost. */
static int remote_seen;

/* Busy-poll until `need_local` completions of our own operations came and, with
 * need_remote, one signal (consumed). */
static void wait_until(struct side *s, int need_remote, int need_local)
{
    int local = 0;
    while ((need_remote && remote_seen == 0) || local < need_local) {
        if (poll1(s) & FI_REMOTE_CQ_DATA)
            remote_seen++;
        else
            local++;
    }
    if (need_remote)
        remote_seen--;
}

static void signal_peer(struct side *s, fi_addr_t peer, uint64_t pbase, uint64_t pkey, size_t size)
{
    ssize_t rc;
    void *desc = fi_mr_desc(s->mr);
    while ((rc = fi_writedata(s->ep, s->buf + size, SIGNAL, desc, 1, peer, pbase + size, pkey, NULL)) == -FI_EAGAIN)
        fi_cq_read(s->cq, NULL, 0);
    CHECK(rc);
}

static void read_from(struct side *s, size_t size, fi_addr_t peer, uint64_t pbase, uint64_t pkey)
{
    ssize_t rc;
    void *desc = fi_mr_desc(s->mr);
    while ((rc = fi_read(s->ep, s->buf, size, desc, peer, pbase, pkey, NULL)) == -FI_EAGAIN)
        fi_cq_read(s->cq, NULL, 0);
    CHECK(rc);
}

/* The server of reads: drive progress (tcp and shm serve one-sided requests only
 * while the target polls) until the client writes a byte into the pipe rfd. */
static void serve_until_told(struct side *s, int rfd)
{
    char c;
    for (unsigned k = 1;; k++) {
        fi_cq_read(s->cq, NULL, 0);
        if ((k & 1023) == 0) { /* a cheap check every 1024 polls */
            fd_set fds;
            struct timeval tv = {0, 0};
            FD_ZERO(&fds);
            FD_SET(rfd, &fds);
            if (select(rfd + 1, &fds, NULL, NULL, &tv) > 0 && read(rfd, &c, 1) >= 0)
                return;
        }
    }
}

/* Pin this process to the last CPU of its affinity (server) or to the others (client). */
static void pin(int server)
{
    cpu_set_t all, mine;
    if (sched_getaffinity(0, sizeof all, &all) || CPU_COUNT(&all) < 2)
        return;
    int last = -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &all))
            last = c;
    CPU_ZERO(&mine);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &all) && (c == last) == server)
            CPU_SET(c, &mine);
    sched_setaffinity(0, sizeof mine, &mine);
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
        fprintf(stderr, "usage: %s PROVIDER DOMAIN pingpong|write|read|readpp SIZE ITERS\n", argv[0]);
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
    const char *pin_env = getenv("FABRIC_RAW_PIN");
    if (pin_env && strcmp(pin_env, "1") == 0)
        pin(pid == 0);
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
            serve_until_told(&s, rfd);
        } else if (strcmp(mode, "readpp") == 0) {
            for (int i = 0; i < warm + iters; i++) {
                wait_until(&s, 1, 0);                      /* the client's signal */
                read_from(&s, size, peer, peerx.base, peerx.key);
                wait_until(&s, 0, 1);                      /* its payload is here */
                signal_peer(&s, peer, peerx.base, peerx.key, size);
                wait_until(&s, 0, 1);
            }
            serve_until_told(&s, rfd); /* the client's last read needs our progress */
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
        } else if (strcmp(mode, "readpp") == 0) {
            signal_peer(&s, peer, peerx.base, peerx.key, size);
            wait_until(&s, 1, 1);                          /* our signal went, the server's came */
            read_from(&s, size, peer, peerx.base, peerx.key);
            wait_until(&s, 0, 1);
        } else {
            writedata(&s, size, peer, peerx.base, peerx.key, 1);
            wait_both(&s);
        }
        if (i >= warm)
            t[i - warm] = now_us() - t0;
    }
    if ((strcmp(mode, "read") == 0 || strcmp(mode, "readpp") == 0) && write(wfd, "x", 1) != 1)
        return 1;
    waitpid(pid, NULL, 0);
    double sum = 0;
    for (int i = 0; i < iters; i++)
        sum += t[i];
    qsort(t, iters, sizeof *t, cmp);
    printf("%s %zu median_us=%.2f mean_us=%.2f\n", mode, size, t[iters / 2], sum / iters);
    return 0;
}
