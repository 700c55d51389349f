/*
 * spank_stepd.c - what both slurmstepd contexts (remote and job_script) need:
 * this node's Slurm name, and revoking a lend record.
 */
#define _POSIX_C_SOURCE 200809L

#include "spank_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <slurm/slurm.h>

/* This node's Slurm name: SLURMD_NODENAME from the job environment (remote),
 * from the process environment (every slurmstepd), else the short hostname.
 * Several slurmd -N on one host share the hostname, so the Slurm name comes
 * first. */
void node_name(spank_t sp, char *buf, size_t len)
{
    const char *env;
    char *dot;

    buf[0] = '\0';
    if (spank_remote(sp) && spank_getenv(sp, "SLURMD_NODENAME", buf, (int)len) == ESPANK_SUCCESS &&
        buf[0] != '\0')
        return;
    env = getenv("SLURMD_NODENAME");
    if (env && env[0] != '\0') {
        snprintf(buf, len, "%s", env);
        return;
    }
    if (gethostname(buf, len) != 0) {
        buf[0] = '\0';
        return;
    }
    buf[len - 1] = '\0';
    dot = strchr(buf, '.');
    if (dot)
        *dot = '\0';
}

void revoke_record(const char *node, unsigned int job_id, const char *who)
{
    char err[FAAS_ERR_LEN];
    int rc = faas_lend_record_revoke(g_cfg.spool_dir, node, job_id, err, sizeof(err));

    if (rc < 0)
        slurm_error("faas: job %u (%s): cannot revoke the lend record: %s", job_id, who, err);
    else if (rc == 0)
        slurm_verbose("faas: job %u on %s: lend record revoked (%s)", job_id, node, who);
}
