/*
 * spank_faas.c - the slurm-faas SPANK plugin's dispatch: the only file with
 * slurm_spank_* symbols. Each hook says the Slurm context it runs in and
 * hands over to the file of that context:
 *   spank_config.c      plugstack.conf arguments (every context; slurmd)
 *   spank_option.c      --faas-share (allocator/local and remote)
 *   spank_remote.c      remote: the slurmstepd of each step
 *   spank_job_script.c  job_script: job_prolog and job_epilog
 *   spank_task.c        remote, in each task: bind it to the kept cores
 *   spank_stepd.c       what both slurmstepd contexts share
 * The plugin lends the spare cores and memory of a job to serverless
 * functions by writing a lend record into a spool directory that the node
 * agent watches; all parsing, arithmetic and file writing lives in the
 * Slurm-free core (faas_core.h).
 *
 * plugstack.conf:
 *   optional /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_faas.so spool=/var/spool/slurm-faas
 *            [cpu_map=identity|block] [node_cpus=N] [reserve_cores=N] [reserve_mem=SIZE]
 *            [auto_mem_percent=P] [default=SPEC]
 * user:
 *   sbatch --faas-share[=auto|no|cores=N,mem=SIZE[,until=MIN]] job.sh
 *
 * HARD RULE: inside slurmstepd (remote and job_script contexts) every hook
 * returns 0. An error from init_post_opt, user_init, job_prolog or job_epilog
 * drains the node, and no lending problem (missing or full spool, bad
 * permissions, odd environment) is worth that: log one line, lend nothing.
 * Only the option callback in sbatch/salloc/srun returns -1, for a bad spec.
 *
 * Where lending happens, and what Slurm 22.05.8 was probed to give each hook:
 * docs/spank_faas.8.md ("WHERE AND WHEN LENDING HAPPENS", "WHAT WAS PROBED ON SLURM 22.05").
 */
#define _POSIX_C_SOURCE 200809L

#include "spank_internal.h"

SPANK_PLUGIN(faas, 1)

/* Every context (sbatch/salloc/srun as the user; slurmd, slurmstepd as
 * root): read plugstack.conf arguments and register --faas-share. In slurmd
 * (at its start) a bad argument is reported loudly, once per node. */
int slurm_spank_init(spank_t sp, int ac, char **av)
{
    spank_context_t ctx = spank_context();

    parse_plugstack_args(ac, av);
    if (ctx == S_CTX_SLURMD) {
        slurmd_report_config();
        return ESPANK_SUCCESS;
    }
    if (ctx == S_CTX_ERROR)
        return ESPANK_SUCCESS;
    if (ctx == S_CTX_REMOTE)
        remote_init();
    option_register(sp);
    return ESPANK_SUCCESS;
}

/* Remote context (slurmstepd of each step, root, after the option callbacks,
 * before any task starts). Always returns 0: an error here drains the node. */
int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    (void)ac;
    (void)av;
    if (spank_context() != S_CTX_REMOTE || g_inert)
        return ESPANK_SUCCESS;
    remote_init_post_opt(sp);
    return ESPANK_SUCCESS;
}

/* Remote context, in each task of a step just before it execs, as the user:
 * a lending job's task is bound to the cores the job kept (spank_task.c).
 * Always returns 0: a lending problem never fails the task. */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
    (void)ac;
    (void)av;
    if (spank_context() != S_CTX_REMOTE || g_inert)
        return ESPANK_SUCCESS;
    task_bind_to_kept(sp);
    return ESPANK_SUCCESS;
}

/* Every context at teardown. In the extern step (every node) and the batch
 * step (root) this is where the job's lend ends: normal exit, scancel,
 * timeout; the revoke is on disk before slurmstepd goes on. */
int slurm_spank_exit(spank_t sp, int ac, char **av)
{
    (void)sp;
    (void)ac;
    (void)av;
    if (spank_context() != S_CTX_REMOTE)
        return ESPANK_SUCCESS;
    remote_exit();
    return ESPANK_SUCCESS;
}

/* job_script context (short-lived slurmstepd, root): at allocation, hand the
 * option over to the extern step. Always returns 0 (an error drains). */
int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
    parse_plugstack_args(ac, av);
    if (g_inert)
        return ESPANK_SUCCESS;
    job_script_prolog(sp);
    return ESPANK_SUCCESS;
}

/* job_script context (short-lived slurmstepd, root, once per job and node at
 * its end): backstop revoke in case a step died before its exit hook, and
 * the hand-over file of a job whose extern step never ran. Idempotent.
 * Always returns 0 (an error drains). */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    parse_plugstack_args(ac, av);
    if (g_inert)
        return ESPANK_SUCCESS;
    job_script_epilog(sp);
    return ESPANK_SUCCESS;
}
