/*
 * core_spare.c - what a node lends: the spec, the site's reserve and caps,
 * and the job's allocation on the node in; Slurm core ids, OS CPUs and
 * memory out.
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

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

    /*
     * A job confined by task/cgroup (or task/affinity with a cpuset) names
     * its OS CPUs: the k-th allocated core is the k-th group of
     * nos_cpus / n CPUs of its cpuset (threads of one core are adjacent in
     * the job's sorted cpuset on every layout Slurm builds). A cpuset that
     * is not a whole multiple of the cores is not understood: lend nothing.
     */
    out->cpu_source = FAAS_CPUS_FROM_MAP;
    if (take > 0 && alloc->nos_cpus > 0) {
        unsigned int per_core;

        if (alloc->nos_cpus > FAAS_MAX_CPUS || alloc->nos_cpus % n != 0) {
            set_err(err, errlen, "the job's cpuset has %u CPUs for %u allocated cores", alloc->nos_cpus, n);
            out->mem_mb = 0;
            return -1;
        }
        per_core = alloc->nos_cpus / n;
        for (i = 0; i < take; i++) {
            out->slurm_cpus[i] = alloc->cores[n - take + i];
            out->os_cpus[i] = alloc->os_cpus[(n - take + i) * per_core];
        }
        out->ncpus = take;
        out->cpu_source = FAAS_CPUS_FROM_CGROUP;
        return 0;
    }

    if (take > 0 && cfg->cpu_map == FAAS_CPU_MAP_BLOCK && (cfg->node_cpus == 0 || alloc->online_cpus == 0)) {
        set_err(err, errlen,
                "cpu_map=block needs node_cpus=N in plugstack.conf and a known online CPU count");
        out->mem_mb = 0;
        return -1;
    }
    /* The job keeps its low cores; the highest-numbered ones are lent. */
    for (i = 0; i < take; i++) {
        unsigned int id = alloc->cores[n - take + i];

        out->slurm_cpus[i] = id;
        if (cfg->cpu_map == FAAS_CPU_MAP_BLOCK) {
            /*
             * Block map: node_cpus declared cores share online_cpus real
             * CPUs in contiguous blocks. The dev cluster declares CPUs=8 per
             * node on a 2-CPU machine (SlurmdParameters=config_overrides),
             * so declared cores 0-3 share OS CPU 0 and 4-7 share OS CPU 1:
             * pinning a function to the OS CPU of its lent core stays real.
             */
            if (id >= cfg->node_cpus) {
                set_err(err, errlen, "core id %u is beyond node_cpus=%u", id, cfg->node_cpus);
                out->ncpus = 0;
                out->mem_mb = 0;
                return -1;
            }
            out->os_cpus[i] = (unsigned int)((unsigned long long)id * alloc->online_cpus / cfg->node_cpus);
        } else {
            out->os_cpus[i] = id;
        }
    }
    out->ncpus = take;
    return 0;
}
