/*
 * spank_task.c - remote context, in each task of a lending job just before
 * it execs (slurm_spank_task_init, as the user): keep the task on the cores
 * the job kept. The task's CPU affinity becomes its current affinity within
 * the kept OS CPUs (all of them when the two do not meet), and the task's
 * environment says so:
 *   SLURM_FAAS_KEPT_CPUS   the OS CPUs the job kept on this node ("0-3,8")
 *   SLURM_FAAS_BOUND       1 when this hook bound the task, 0 when it did not
 *   OMP_NUM_THREADS        the task's CPUs, unless the job set it
 *   OMP_PLACES             one place per kept CPU ("{0},{1}"), unless set
 * SLURM_FAAS_BIND=no in the job's environment leaves the affinity alone (the
 * job then promises to stay within SLURM_FAAS_KEPT_CPUS: docs/spank_faas.8.md).
 * Nothing here fails a task: a problem logs one line and binds nothing.
 */
#define _GNU_SOURCE

#include "spank_internal.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>

#include <slurm/slurm.h>

static unsigned int g_lent_cores[FAAS_MAX_CPUS];
static unsigned int g_kept[FAAS_MAX_CPUS];

/* "0-3,8" from ascending ids; "" when it does not fit. */
static void cpulist_text(const unsigned int *ids, unsigned int n, char *buf, size_t len)
{
    size_t used = 0;
    unsigned int i = 0;

    buf[0] = '\0';
    while (i < n) {
        unsigned int j = i;
        int r;

        while (j + 1 < n && ids[j + 1] == ids[j] + 1)
            j++;
        r = j > i ? snprintf(buf + used, len - used, "%s%u-%u", used ? "," : "", ids[i], ids[j])
                  : snprintf(buf + used, len - used, "%s%u", used ? "," : "", ids[i]);
        if (r < 0 || (size_t)r >= len - used) {
            buf[0] = '\0';
            return;
        }
        used += (size_t)r;
        i = j + 1;
    }
}

static void places_text(const unsigned int *ids, unsigned int n, char *buf, size_t len)
{
    size_t used = 0;
    unsigned int i;

    buf[0] = '\0';
    for (i = 0; i < n; i++) {
        int r = snprintf(buf + used, len - used, "%s{%u}", i ? "," : "", ids[i]);

        if (r < 0 || (size_t)r >= len - used) {
            buf[0] = '\0';
            return;
        }
        used += (size_t)r;
    }
}

/* The task's affinity: what it has within the kept CPUs, else all of them.
 * Returns how many CPUs the task may use now (0: nothing was changed). */
static unsigned int bind_task(const unsigned int *kept, unsigned int nkept, unsigned int *mine)
{
    cpu_set_t *cur, *want;
    size_t size = CPU_ALLOC_SIZE(FAAS_MAX_CPUS);
    unsigned int i, n = 0;

    cur = CPU_ALLOC(FAAS_MAX_CPUS);
    want = CPU_ALLOC(FAAS_MAX_CPUS);
    if (!cur || !want)
        goto out;
    CPU_ZERO_S(size, want);
    if (sched_getaffinity(0, size, cur) == 0) {
        for (i = 0; i < nkept; i++)
            if (CPU_ISSET_S(kept[i], size, cur)) {
                CPU_SET_S(kept[i], size, want);
                mine[n++] = kept[i];
            }
    }
    if (n == 0) { /* the task's binding and the kept CPUs do not meet: all kept ones */
        for (i = 0; i < nkept; i++) {
            CPU_SET_S(kept[i], size, want);
            mine[n++] = kept[i];
        }
    }
    if (sched_setaffinity(0, size, want) != 0)
        n = 0;
out:
    if (cur)
        CPU_FREE(cur);
    if (want)
        CPU_FREE(want);
    return n;
}

void task_bind_to_kept(spank_t sp)
{
    static unsigned int mine[FAAS_MAX_CPUS];
    char node[256], err[FAAS_ERR_LEN], text[8192], opt[16], *cores = NULL;
    unsigned int nlent = 0, nmine = 0;
    uint32_t job_id = 0;
    uid_t uid = 0;
    int lent = 0, shared = 0, n;

    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS)
        return;
    node_name(sp, node, sizeof(node));
    if (faas_lend_record_cores(g_cfg.spool_dir, node, job_id, g_lent_cores, FAAS_MAX_CPUS, &nlent, &lent, err,
                               sizeof(err)) != 0 || !lent || nlent == 0)
        return; /* nothing lent here (or unreadable: the step check already logged it) */
    if (read_allocation(sp, job_id, uid, node, &cores) != 0)
        return;
    n = faas_kept_cpus(&g_cfg, &g_alloc, g_lent_cores, nlent, g_kept, FAAS_MAX_CPUS, &shared, err, sizeof(err));
    if (n <= 0) {
        slurm_error("faas: job %u on %s: the kept CPUs are unknown (%s); the task is not bound", job_id, node,
                    n < 0 ? err : "none");
        return;
    }
    cpulist_text(g_kept, (unsigned int)n, text, sizeof(text));
    if (text[0] != '\0')
        (void)spank_setenv(sp, "SLURM_FAAS_KEPT_CPUS", text, 1);
    if (spank_getenv(sp, "SLURM_FAAS_BIND", opt, sizeof(opt)) == ESPANK_SUCCESS && strcmp(opt, "no") == 0) {
        (void)spank_setenv(sp, "SLURM_FAAS_BOUND", "0", 1);
        return;
    }
    nmine = bind_task(g_kept, (unsigned int)n, mine);
    (void)spank_setenv(sp, "SLURM_FAAS_BOUND", nmine ? "1" : "0", 1);
    if (nmine == 0) {
        slurm_error("faas: job %u on %s: cannot bind the task to its kept CPUs %s", job_id, node, text);
        return;
    }
    if (shared)
        slurm_verbose("faas: job %u on %s: kept and lent cores share OS CPUs %s (cpu_map)", job_id, node, text);
    snprintf(opt, sizeof(opt), "%u", nmine);
    (void)spank_setenv(sp, "OMP_NUM_THREADS", opt, 0);
    places_text(mine, nmine, text, sizeof(text));
    if (text[0] != '\0')
        (void)spank_setenv(sp, "OMP_PLACES", text, 0);
}
