/*
 * spank_config.c - the plugstack.conf arguments, parsed in every context (one
 * copy per sbatch, slurmd or slurmstepd process), and reported by slurmd.
 */
#define _POSIX_C_SOURCE 200809L

#include "spank_internal.h"

#include <stdio.h>

#include <slurm/slurm.h>

struct faas_config g_cfg;
int g_inert;
char g_inert_why[FAAS_ERR_LEN + 96];

/* slurm_spank_init does not run in the job_script context (job_prolog and
 * job_epilog): every hook that needs the config calls this first. */
void parse_plugstack_args(int ac, char **av)
{
    static int parsed;
    char err[FAAS_ERR_LEN];
    int i;

    if (parsed)
        return;
    parsed = 1;
    faas_config_defaults(&g_cfg);
    g_inert = 0;
    for (i = 0; i < ac; i++) {
        if (faas_config_parse_arg(&g_cfg, av[i], err, sizeof(err)) != 0) {
            snprintf(g_inert_why, sizeof(g_inert_why), "argument '%.64s': %s", av[i], err);
            g_inert = 1;
            return;
        }
    }
}

/* slurmd context, from slurm_spank_init at slurmd's start: a bad argument is
 * reported loudly, once per node. */
void slurmd_report_config(void)
{
    if (g_inert)
        slurm_error("faas: plugstack.conf %s; slurm-faas is INERT on this node (jobs run, nothing is "
                    "lent) until the argument is fixed and slurmd restarted",
                    g_inert_why);
    else
        slurm_info("faas: spool %s, cpu_map %s, reserve %u cores %llu MB, default %s", g_cfg.spool_dir,
                   g_cfg.cpu_map == FAAS_CPU_MAP_BLOCK ? "block" : "identity", g_cfg.reserve_cores,
                   g_cfg.reserve_mem_mb, g_cfg.default_spec.mode == FAAS_SPEC_NO ? "no" : "lend");
}
