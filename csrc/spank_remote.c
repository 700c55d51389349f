/*
 * spank_remote.c - the remote context: the slurmstepd of each step (root).
 * The extern step (PrologFlags=Contain, every node) lends at allocation from
 * job_prolog's hand-over; the batch step lends on its node when there is no
 * extern step; every step checks before its tasks start that the job kept
 * enough cores, and the lending step revokes in its exit hook.
 */
#define _POSIX_C_SOURCE 200809L

#include "spank_internal.h"

#include <errno.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <slurm/slurm.h>

/* What this slurmstepd must revoke in its exit hook. */
static int g_revoke_at_exit;
static unsigned int g_lent_job;
static char g_lent_node[256];

/* Big enough to be kept off slurmstepd's stack. */
struct faas_node_alloc g_alloc;
static struct faas_lend g_lend;

/* A positive integer from the start of a job environment variable
 * ("2(x3),1" -> 2), or dflt for anything else (absent, garbage, 0, huge). */
static unsigned int env_leading_uint(spank_t sp, const char *name, unsigned int dflt)
{
    char buf[256], *end;
    unsigned long v;

    if (spank_getenv(sp, name, buf, sizeof(buf)) != ESPANK_SUCCESS)
        return dflt;
    errno = 0;
    v = strtoul(buf, &end, 10);
    if (errno != 0 || end == buf || v == 0 || v > FAAS_MAX_CPUS)
        return dflt;
    return (unsigned int)v;
}

static uint32_t step_id(spank_t sp)
{
    uint32_t step = 0;

    if (spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS)
        return SLURM_PENDING_STEP;
    return step;
}

static void user_name(uid_t uid, char *buf, size_t len)
{
    struct passwd pw, *res = NULL;
    char pwbuf[2048];

    buf[0] = '\0';
    if (getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &res) == 0 && res)
        snprintf(buf, len, "%s", res->pw_name);
}

/* The job's allocation on this node (remote context) into g_alloc, and its
 * cpuset when it is confined. Returns 0, or -1 after logging one line. */
int read_allocation(spank_t sp, uint32_t job_id, uid_t uid, const char *node, char **cores_text)
{
    char err[FAAS_ERR_LEN];
    char *cores = NULL;
    uint64_t mem = 0;
    long online;
    int n, ver = 0;

    if (spank_get_item(sp, S_JOB_ALLOC_CORES, &cores) != ESPANK_SUCCESS || !cores ||
        spank_get_item(sp, S_JOB_ALLOC_MEM, &mem) != ESPANK_SUCCESS) {
        slurm_error("faas: job %u: cannot read the job's allocation on %s; lending nothing", job_id, node);
        return -1;
    }
    memset(&g_alloc, 0, sizeof(g_alloc));
    n = faas_cpulist_parse(cores, g_alloc.cores, FAAS_MAX_CPUS, err, sizeof(err));
    if (n < 0) {
        slurm_error("faas: job %u: allocated cores '%s': %s; lending nothing", job_id, cores, err);
        return -1;
    }
    g_alloc.ncores = (unsigned int)n;
    g_alloc.mem_mb = mem;
    online = sysconf(_SC_NPROCESSORS_ONLN);
    g_alloc.online_cpus = online > 0 && online <= FAAS_MAX_CPUS ? (unsigned int)online : 0;
    n = faas_cgroup_job_cpus(g_cfg.cgroup_root, node, (unsigned int)uid, job_id, g_alloc.os_cpus, FAAS_MAX_CPUS,
                             &ver, err, sizeof(err));
    if (n < 0) {
        slurm_error("faas: job %u: cannot read the job's cpuset: %s; lending nothing", job_id, err);
        return -1;
    }
    g_alloc.nos_cpus = (unsigned int)n;
    *cores_text = cores;
    return 0;
}

/* Compute and write the lend record of this job on this node (create only:
 * an existing record is kept). Returns 1 when a record now exists that this
 * process wrote, 0 otherwise. Never fails the step. */
static int lend_here(spank_t sp, const struct faas_spec *spec, const char *spec_text, unsigned int used_cores,
                     const char *who)
{
    struct faas_lend_meta meta;
    char err[FAAS_ERR_LEN], *cores = NULL;
    uint32_t job_id = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    int rc;

    if (spec->mode == FAAS_SPEC_NO)
        return 0;
    memset(&meta, 0, sizeof(meta));
    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS) {
        slurm_error("faas: %s: cannot read the job's id or owner; lending nothing", who);
        return 0;
    }
    node_name(sp, meta.node, sizeof(meta.node));
    if (read_allocation(sp, job_id, uid, meta.node, &cores) != 0)
        return 0;
    g_alloc.used_cores = used_cores;
    if (faas_spare_compute(spec, &g_cfg, &g_alloc, &g_lend, err, sizeof(err)) != 0) {
        slurm_error("faas: job %u on %s: %s; lending nothing", job_id, meta.node, err);
        return 0;
    }
    if (g_lend.ncpus == 0 && g_lend.mem_mb == 0) {
        slurm_info("faas: job %u on %s has nothing to lend (cores %s, %u used, %llu MB)", job_id, meta.node,
                   cores, g_alloc.used_cores, g_alloc.mem_mb);
        return 0;
    }
    meta.job_id = job_id;
    meta.uid = (unsigned int)uid;
    meta.gid = (unsigned int)gid;
    meta.end_time = 0; /* not known inside slurmstepd; the co-scheduler asks squeue */
    meta.until_min = spec->until_min;
    meta.job_mem_mb = g_alloc.mem_mb; /* the agent keeps usage + lent + margin within it */
    snprintf(meta.spec, sizeof(meta.spec), "%s", spec_text);
    rc = faas_lend_record_create(g_cfg.spool_dir, &meta, &g_lend, err, sizeof(err));
    if (rc < 0) {
        slurm_error("faas: job %u on %s: %s; lending nothing", job_id, meta.node, err);
        return 0;
    }
    if (rc == 1)
        return 0; /* another step of the job lent here first */
    slurm_info("faas: job %u on %s lends %u cores (OS CPUs from %s) and %llu MB (%s)", job_id, meta.node,
               g_lend.ncpus, g_lend.cpu_source == FAAS_CPUS_FROM_CGROUP ? "its cpuset" : "cpu_map", g_lend.mem_mb,
               who);
    return 1;
}

static void remember_for_exit(unsigned int job_id, const char *node)
{
    g_revoke_at_exit = 1;
    g_lent_job = job_id;
    snprintf(g_lent_node, sizeof(g_lent_node), "%s", node);
}

/*
 * A step is about to start its tasks on this node: if they need more cores
 * than the job kept here, take the lend back now, before they run. Only for
 * lends the plugin sized itself (auto cores): cores=N is the user's word.
 */
static void step_check(spank_t sp, unsigned int needed, const char *who)
{
    const struct faas_spec *spec = g_opt_given ? &g_opt_spec : &g_cfg.default_spec;
    char node[256], err[FAAS_ERR_LEN], *cores = NULL;
    unsigned int lent_cpus = 0, ncores;
    uint32_t job_id = 0;
    int lent = 0, rc, n;

    if (!g_opt_bad && spec->mode == FAAS_SPEC_EXPLICIT && spec->cores > 0)
        return;
    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS)
        return;
    node_name(sp, node, sizeof(node));
    rc = faas_lend_record_peek(g_cfg.spool_dir, node, job_id, &lent_cpus, &lent, err, sizeof(err));
    if (rc < 0) {
        slurm_error("faas: job %u (%s): %s; revoking to be safe", job_id, who, err);
        revoke_record(node, job_id, who);
        return;
    }
    if (rc == 1 || !lent || lent_cpus == 0)
        return;
    if (spank_get_item(sp, S_JOB_ALLOC_CORES, &cores) != ESPANK_SUCCESS || !cores) {
        revoke_record(node, job_id, who);
        return;
    }
    n = faas_cpulist_parse(cores, g_alloc.cores, FAAS_MAX_CPUS, err, sizeof(err));
    ncores = n > 0 ? (unsigned int)n : 0;
    if (ncores >= lent_cpus && needed <= ncores - lent_cpus)
        return;
    slurm_info("faas: job %u on %s: %s needs %u cores, the job kept %u: lend revoked", job_id, node, who, needed,
               ncores >= lent_cpus ? ncores - lent_cpus : 0);
    revoke_record(node, job_id, who);
}

/* ------------------------------------------------------------------------ */
/* remote context: the extern step (every node, PrologFlags=Contain)        */
/* ------------------------------------------------------------------------ */

static void extern_step_lend(spank_t sp)
{
    struct faas_pending pend;
    struct faas_spec spec;
    char node[256], err[FAAS_ERR_LEN];
    uint32_t job_id = 0;
    int rc;

    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS)
        return;
    node_name(sp, node, sizeof(node));
    rc = faas_pending_read(g_cfg.spool_dir, node, job_id, &pend, err, sizeof(err));
    if (rc == 1)
        return; /* the job did not opt in, or policy said no */
    if (rc < 0) {
        slurm_error("faas: job %u on %s: %s; lending nothing", job_id, node, err);
        return;
    }
    (void)faas_pending_remove(g_cfg.spool_dir, node, job_id, err, sizeof(err));
    if (pend.given) {
        if (faas_spec_parse(pend.spec, &spec, err, sizeof(err)) != 0) {
            slurm_error("faas: job %u: --faas-share '%.64s': %s; lending nothing", job_id, pend.spec, err);
            return;
        }
    } else {
        spec = g_cfg.default_spec;
    }
    /* Tasks per node are not known before a step starts: the estimate is
     * ceil(ntasks / nnodes) single-CPU tasks; step_check corrects it. */
    if (lend_here(sp, &spec, pend.spec, pend.tasks_on_node, "extern step, at allocation"))
        remember_for_exit(job_id, node);
}

/* ------------------------------------------------------------------------ */
/* remote context: the batch step                                           */
/* ------------------------------------------------------------------------ */

static void batch_step_lend(spank_t sp)
{
    const struct faas_spec *spec = g_opt_given ? &g_opt_spec : &g_cfg.default_spec;
    char node[256], partition[256], user[256], why[FAAS_ERR_LEN];
    unsigned int tasks, cpt;
    uint32_t job_id = 0;
    uid_t uid = 0;

    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS)
        return;
    node_name(sp, node, sizeof(node));
    /* The job ends when its batch script does: revoke then, whoever lent. */
    remember_for_exit(job_id, node);

    /* The batch step runs on the job's first node: its task count is the
     * first entry of SLURM_TASKS_PER_NODE ("2(x3),1"). */
    tasks = env_leading_uint(sp, "SLURM_TASKS_PER_NODE", 1);
    cpt = env_leading_uint(sp, "SLURM_CPUS_PER_TASK", 1);
    step_check(sp, tasks * cpt, "the batch step");

    if (g_opt_bad) {
        slurm_error("faas: job %u: --faas-share value did not parse in slurmstepd; lending nothing", job_id);
        return;
    }
    if (spec->mode == FAAS_SPEC_NO)
        return;
    if (spank_getenv(sp, "SLURM_JOB_PARTITION", partition, sizeof(partition)) != ESPANK_SUCCESS)
        partition[0] = '\0';
    user_name(uid, user, sizeof(user));
    if (!faas_policy_allows(&g_cfg, partition, user, why, sizeof(why))) {
        slurm_info("faas: job %u lends nothing: %s", job_id, why);
        return;
    }
    /* Without PrologFlags=Contain nothing has lent here yet: lend now, with
     * the exact task count. With it, the extern step's record stays. */
    (void)lend_here(sp, spec, g_opt_given ? g_opt_text : "", tasks * cpt, "batch step");
}

/* slurm_spank_init (remote context): say once why nothing will be lent. */
void remote_init(void)
{
    if (g_inert)
        slurm_verbose("faas: plugstack.conf %s; lending nothing", g_inert_why);
}

/* slurm_spank_init_post_opt (remote context, root, after the option
 * callbacks, before any task starts): lend, or check the lend, by step. */
void remote_init_post_opt(spank_t sp)
{
    uint32_t step;
    uint32_t ntasks = 0, cpt = 0;

    step = step_id(sp);
    if (step == SLURM_EXTERN_CONT) {
        extern_step_lend(sp);
    } else if (step == SLURM_BATCH_SCRIPT) {
        batch_step_lend(sp);
    } else if (step <= SLURM_MAX_NORMAL_STEP_ID) {
        /* an srun step: its tasks on this node and their CPUs each */
        if (spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &ntasks) != ESPANK_SUCCESS || ntasks == 0)
            ntasks = 1;
        if (spank_get_item(sp, S_STEP_CPUS_PER_TASK, &cpt) != ESPANK_SUCCESS || cpt == 0)
            cpt = 1;
        step_check(sp, ntasks * cpt, "a step");
    }
}

/* slurm_spank_exit (remote context): the job's lend ends with the step that
 * lent (or, for the batch step, that the job ends with). */
void remote_exit(void)
{
    if (!g_revoke_at_exit)
        return;
    revoke_record(g_lent_node, g_lent_job, "step exit");
    g_revoke_at_exit = 0;
}
