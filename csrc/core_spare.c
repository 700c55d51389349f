/*
 * core_spare.c - what a node lends: the spec, the site's reserve and caps,
 * and the job's allocation on the node in; Slurm core ids, OS CPUs and
 * memory out.
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

#include <string.h>

static int check_cpu_map(const struct faas_config *cfg, const struct faas_node_alloc *alloc, char *err,
                         unsigned long errlen);
static int os_cpus_of(const struct faas_config *cfg, const struct faas_node_alloc *alloc, unsigned int k,
                      unsigned int *out, unsigned int max, char *err, unsigned long errlen);

/* ------------------------------------------------------------------------ */
/* what a node lends                                                        */
/* ------------------------------------------------------------------------ */

int faas_spare_compute(const struct faas_spec *spec, const struct faas_config *cfg,
                       const struct faas_node_alloc *alloc, struct faas_lend *out, char *err,
                       unsigned long errlen)
{
    unsigned int n, lendable, take, i;
    unsigned long long mem_avail;

    if (!spec || !cfg || !alloc || !out) {
        set_err(err, errlen, "missing argument");
        return -1;
    }
    out->ncpus = 0;
    out->mem_mb = 0;
    out->cpu_source = FAAS_CPUS_FROM_MAP;
    n = alloc->ncores;
    if (n > FAAS_MAX_CPUS) {
        set_err(err, errlen, "job holds %u cores, more than the maximum %d", n, FAAS_MAX_CPUS);
        return -1;
    }
    for (i = 1; i < n; i++) {
        if (alloc->cores[i] <= alloc->cores[i - 1]) {
            set_err(err, errlen, "allocated core ids are not ascending (%u after %u)", alloc->cores[i],
                    alloc->cores[i - 1]);
            return -1;
        }
    }
    if (spec->mode == FAAS_SPEC_NO)
        return 0;
    if (spec->mode != FAAS_SPEC_AUTO && spec->mode != FAAS_SPEC_EXPLICIT) {
        set_err(err, errlen, "unknown spec mode %d", spec->mode);
        return -1;
    }

    /* The job keeps its reserve and always at least one core. */
    lendable = n > cfg->reserve_cores ? n - cfg->reserve_cores : 0;
    if (n > 0 && lendable > n - 1)
        lendable = n - 1;
    mem_avail = alloc->mem_mb > cfg->reserve_mem_mb ? alloc->mem_mb - cfg->reserve_mem_mb : 0;

    /*
     * A resource the spec names is lent up to that amount; one it does not
     * name (and every resource under auto) is lent as auto decides: the cores
     * the job's tasks leave idle, and auto_mem_percent of the memory. So
     * cores=2 lends two cores and auto's memory share.
     */
    {
        unsigned int pct = cfg->auto_mem_percent > 100 ? 100 : cfg->auto_mem_percent;
        unsigned int idle = n > alloc->used_cores ? n - alloc->used_cores : 0;
        unsigned int auto_cores = idle > cfg->reserve_cores ? idle - cfg->reserve_cores : 0;
        /* mem_avail * pct / 100 without overflowing 64 bits */
        unsigned long long auto_mem = (mem_avail / 100) * pct + (mem_avail % 100) * pct / 100;
        int explicit_spec = spec->mode == FAAS_SPEC_EXPLICIT;

        take = explicit_spec && spec->cores ? spec->cores : auto_cores;
        if (take > lendable)
            take = lendable;
        unsigned int maxpct = cfg->max_mem_percent > 100 ? 100 : cfg->max_mem_percent;
        unsigned long long mem_cap = (alloc->mem_mb / 100) * maxpct + (alloc->mem_mb % 100) * maxpct / 100;

        out->mem_mb = explicit_spec && spec->mem_mb ? spec->mem_mb : auto_mem;
        if (out->mem_mb > mem_avail)
            out->mem_mb = mem_avail;
        if (out->mem_mb > mem_cap)
            out->mem_mb = mem_cap;
    }

    if (take > 0 && check_cpu_map(cfg, alloc, err, errlen) != 0) {
        out->mem_mb = 0;
        return -1;
    }
    /* The job keeps its low cores; the highest-numbered ones are lent. */
    out->cpu_source = take > 0 && alloc->nos_cpus > 0 ? FAAS_CPUS_FROM_CGROUP : FAAS_CPUS_FROM_MAP;
    for (i = 0; i < take; i++) {
        out->slurm_cpus[i] = alloc->cores[n - take + i];
        if (os_cpus_of(cfg, alloc, n - take + i, &out->os_cpus[i], 1, err, errlen) < 0) {
            out->ncpus = 0;
            out->mem_mb = 0;
            return -1;
        }
    }
    out->ncpus = take;
    return 0;
}

/*
 * Can the k-th allocated core be mapped to OS CPUs? A job confined by
 * task/cgroup (or task/affinity with a cpuset) names its OS CPUs: the k-th
 * allocated core is the k-th group of nos_cpus / n CPUs of its cpuset
 * (threads of one core are adjacent in the job's sorted cpuset on every
 * layout Slurm builds). A cpuset that is not a whole multiple of the cores is
 * not understood: lend nothing.
 */
static int check_cpu_map(const struct faas_config *cfg, const struct faas_node_alloc *alloc, char *err,
                         unsigned long errlen)
{
    if (alloc->nos_cpus > 0) {
        if (alloc->ncores == 0 || alloc->nos_cpus > FAAS_MAX_CPUS || alloc->nos_cpus % alloc->ncores != 0) {
            set_err(err, errlen, "the job's cpuset has %u CPUs for %u allocated cores", alloc->nos_cpus,
                    alloc->ncores);
            return -1;
        }
        return 0;
    }
    if (cfg->cpu_map == FAAS_CPU_MAP_BLOCK && (cfg->node_cpus == 0 || alloc->online_cpus == 0)) {
        set_err(err, errlen, "cpu_map=block needs node_cpus=N in plugstack.conf and a known online CPU count");
        return -1;
    }
    return 0;
}

/*
 * The OS CPUs of the k-th allocated core (check_cpu_map said yes), at most
 * max of them into out (the first is the core's first thread). Returns the
 * count, or -1 with a message.
 */
static int os_cpus_of(const struct faas_config *cfg, const struct faas_node_alloc *alloc, unsigned int k,
                      unsigned int *out, unsigned int max, char *err, unsigned long errlen)
{
    unsigned int id = alloc->cores[k], per_core, j;

    if (alloc->nos_cpus > 0) {
        per_core = alloc->nos_cpus / alloc->ncores;
        for (j = 0; j < per_core && j < max; j++)
            out[j] = alloc->os_cpus[k * per_core + j];
        return (int)j;
    }
    if (cfg->cpu_map == FAAS_CPU_MAP_BLOCK) {
        /*
         * Block map: node_cpus declared cores share online_cpus real CPUs in
         * contiguous blocks. The dev cluster declares CPUs=8 per node on a
         * 2-CPU machine (SlurmdParameters=config_overrides), so declared
         * cores 0-3 share OS CPU 0 and 4-7 share OS CPU 1: pinning a
         * function to the OS CPU of its lent core stays real.
         */
        if (id >= cfg->node_cpus) {
            set_err(err, errlen, "core id %u is beyond node_cpus=%u", id, cfg->node_cpus);
            return -1;
        }
        out[0] = (unsigned int)((unsigned long long)id * alloc->online_cpus / cfg->node_cpus);
        return 1;
    }
    out[0] = id;
    return 1;
}

/* Add the OS CPUs of core k to the bitmap set (FAAS_MAX_CPUS bits). */
static int mark_core(const struct faas_config *cfg, const struct faas_node_alloc *alloc, unsigned int k,
                     unsigned char *set, char *err, unsigned long errlen)
{
    unsigned int cpus[64];
    int m = os_cpus_of(cfg, alloc, k, cpus, 64, err, errlen), j;

    for (j = 0; j < m; j++) {
        if (cpus[j] >= FAAS_MAX_CPUS) {
            set_err(err, errlen, "OS CPU %u is beyond the maximum %d", cpus[j], FAAS_MAX_CPUS);
            return -1;
        }
        set[cpus[j]] = 1;
    }
    return m < 0 ? -1 : 0;
}

int faas_kept_cpus(const struct faas_config *cfg, const struct faas_node_alloc *alloc, const unsigned int *lent_cores,
                   unsigned int nlent, unsigned int *out, unsigned int max, int *shared, char *err,
                   unsigned long errlen)
{
    static unsigned char kept[FAAS_MAX_CPUS], lent[FAAS_MAX_CPUS];
    unsigned int k, j, n = 0, left = 0;

    if (!cfg || !alloc || (!lent_cores && nlent) || !out || !shared) {
        set_err(err, errlen, "missing argument");
        return -1;
    }
    *shared = 0;
    if (alloc->ncores > FAAS_MAX_CPUS || check_cpu_map(cfg, alloc, err, errlen) != 0)
        return -1;
    memset(kept, 0, sizeof(kept));
    memset(lent, 0, sizeof(lent));
    for (k = 0; k < alloc->ncores; k++) {
        int is_lent = 0;

        for (j = 0; j < nlent && !is_lent; j++)
            is_lent = lent_cores[j] == alloc->cores[k];
        if (mark_core(cfg, alloc, k, is_lent ? lent : kept, err, errlen) != 0)
            return -1;
    }
    for (k = 0; k < FAAS_MAX_CPUS; k++)
        left += kept[k] && !lent[k];
    *shared = left == 0;
    for (k = 0; k < FAAS_MAX_CPUS; k++) {
        if (!kept[k] || (lent[k] && !*shared))
            continue;
        if (n >= max) {
            set_err(err, errlen, "the job keeps more than %u CPUs", max);
            return -1;
        }
        out[n++] = k;
    }
    return (int)n;
}
