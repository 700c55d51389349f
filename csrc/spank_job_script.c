/*
 * spank_job_script.c - the job_script context: job_prolog and job_epilog, in a
 * short-lived slurmstepd as root, once per job and node (job_prolog with
 * PrologFlags=Alloc, at allocation). slurm_spank_init does not run here, and
 * of the job only S_JOB_ID, S_JOB_UID and the process environment are known.
 */
#define _POSIX_C_SOURCE 200809L

#include "spank_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <slurm/slurm.h>

/* job_prolog (root, every node, at allocation with PrologFlags=Alloc;
 * Contain implies it): the only hook that sees --faas-share and the job's
 * partition and user; apply the policy and hand the option over to the
 * extern step. */
void job_script_prolog(spank_t sp)
{
    struct faas_pending pend;
    struct faas_spec spec;
    char node[256], err[FAAS_ERR_LEN], why[FAAS_ERR_LEN];
    char *opt = NULL;
    uint32_t job_id = 0;

    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS) {
        slurm_error("faas: job_prolog: cannot read the job id; lending nothing");
        return;
    }
    memset(&pend, 0, sizeof(pend));
    if (spank_option_getopt(sp, &g_option, &opt) == ESPANK_SUCCESS) {
        pend.given = 1;
        /* A bare --faas-share comes back as the text "(null)". */
        if (opt && strcmp(opt, "(null)") != 0)
            snprintf(pend.spec, sizeof(pend.spec), "%s", opt);
        if (faas_spec_parse(pend.spec, &spec, err, sizeof(err)) != 0) {
            slurm_error("faas: job %u: --faas-share '%.64s': %s; lending nothing", job_id, pend.spec, err);
            return;
        }
    } else {
        spec = g_cfg.default_spec;
    }
    if (spec.mode == FAAS_SPEC_NO)
        return;
    if (!faas_policy_allows(&g_cfg, getenv("SLURM_JOB_PARTITION"), getenv("SLURM_JOB_USER"), why, sizeof(why))) {
        slurm_info("faas: job %u lends nothing: %s", job_id, why);
        return;
    }
    pend.tasks_on_node = faas_tasks_estimate(getenv("SLURM_JOB_NTASKS"), getenv("SLURM_JOB_NUM_NODES"));
    node_name(sp, node, sizeof(node));
    if (faas_pending_write(g_cfg.spool_dir, node, job_id, &pend, err, sizeof(err)) != 0)
        slurm_error("faas: job %u on %s: %s; lending nothing", job_id, node, err);
}

/* job_epilog: revoke the record (the backstop when a step died before its
 * exit hook) and remove the hand-over file of a job whose extern step never
 * ran. Idempotent. */
void job_script_epilog(spank_t sp)
{
    char node[256], err[FAAS_ERR_LEN];
    uint32_t job_id = 0;

    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS) {
        slurm_error("faas: job_epilog: cannot read the job id");
        return;
    }
    node_name(sp, node, sizeof(node));
    revoke_record(node, job_id, "epilog");
    if (faas_pending_remove(g_cfg.spool_dir, node, job_id, err, sizeof(err)) < 0)
        slurm_error("faas: job %u on %s: %s", job_id, node, err);
}
