/*
 * spank_faas.c - the slurm-faas SPANK plugin: the only file with slurm_spank_*
 * symbols. It lends the spare cores and memory of a batch job to serverless
 * functions by writing a lend record into a spool directory that the node
 * agent watches; all parsing, arithmetic and file writing lives in the
 * Slurm-free faas_core.c.
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
 * What Slurm 22.05.8 gives the plugin (probed on a real single-node cluster,
 * CPUs=8 RealMemory=16000 declared on a 2-CPU machine):
 *   - Loading needs plugin_name, plugin_type and plugin_version (from
 *     SPANK_PLUGIN); spank_faas.lds exports only those and slurm_spank_*.
 *   - sbatch (allocator context, as the user) only knows options registered
 *     with spank_option_register() from slurm_spank_init. A value the
 *     callback rejects prints "sbatch: error: faas-share: <why>" and
 *     "sbatch: error: Invalid --faas-share argument: X", exit 255, no job.
 *   - Batch step (remote context, S_JOB_STEPID == SLURM_BATCH_SCRIPT =
 *     0xfffffffb): init, the option callback (remote=1, value taken from
 *     _SLURM_SPANK_OPTION_faas_faas_share in the job env; "" for a bare
 *     --faas-share), init_post_opt, user_init and exit all run in one
 *     slurmstepd process; init_post_opt and exit run as root.
 *     S_JOB_ALLOC_CORES: "0-7" (-c8), "0-1" (-n2): abstract core ids.
 *     S_JOB_ALLOC_MEM: MB (6144 for --mem=6G). S_JOB_NCPUS is the step's
 *     CPUs and S_STEP_CPUS_PER_TASK is all of them in the batch step (2 for
 *     -n2), so neither says what the tasks use. Job env via spank_getenv:
 *     SLURM_TASKS_PER_NODE ("1", "2", "2(x3),1"), SLURM_CPUS_PER_TASK (only
 *     with -c), SLURM_NTASKS (only with -n), SLURM_JOB_CPUS_PER_NODE,
 *     SLURM_MEM_PER_NODE. SLURMD_NODENAME is NOT in the job env before the
 *     task starts (ESPANK_ENV_NOEXIST in init_post_opt) but is in
 *     slurmstepd's own environment (getenv) in every slurmstepd context.
 *     No job end time anywhere (no item, no SLURM_JOB_END_TIME): end_time
 *     is written as 0 and the co-scheduler takes it from squeue.
 *   - job_prolog/job_epilog (job_script context, root, short-lived
 *     slurmstepd): slurm_spank_init is NOT called there, so every hook
 *     parses the plugstack arguments itself. S_JOB_ID and S_JOB_UID work,
 *     the other items and spank_getenv do not (not remote); getenv has
 *     SLURMD_NODENAME and SPANK__SLURM_SPANK_OPTION_faas_faas_share.
 *   - scancel: the batch step's exit hook revokes 10-50 ms after scancel
 *     returns, job_epilog some 20 ms later. If slurmstepd itself dies
 *     (kill -9) the job stays R until cancelled or done; job_epilog then
 *     revokes (the backstop). A missing spool or a bad
 *     plugstack argument logs one error line; the node stays idle.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

#include "faas_core.h"

SPANK_PLUGIN(faas, 1)

#define OPT_NAME "faas-share"

/* ------------------------------------------------------------------------ */
/* state (one slurmstepd / sbatch process = one copy)                       */
/* ------------------------------------------------------------------------ */

static struct faas_config g_cfg;
static int g_inert;                 /* bad plugstack.conf arguments: do nothing */
static int g_opt_given;             /* --faas-share was on the command line */
static int g_opt_bad;               /* ...but its value did not parse (remote) */
static struct faas_spec g_opt_spec; /* its parsed value */
static char g_opt_text[256];        /* its text ("" when given without a value) */

/* What the batch step lent, for the exit hook. */
static int g_lent;
static unsigned int g_lent_job;
static char g_lent_node[256];

/* Big enough to be kept off slurmstepd's stack. */
static struct faas_node_alloc g_alloc;
static struct faas_lend g_lend;

static int faas_opt_cb(int val, const char *optarg, int remote);

static struct spank_option g_option = {
    OPT_NAME,
    "SPEC",
    "Lend this job's spare cores and memory to serverless functions. SPEC: 'auto' (default: "
    "what the job's tasks leave unused), 'no', or cores=N,mem=SIZE[,until=MIN] (SIZE in MiB or "
    "with a K/M/G/T suffix; a resource not named is lent as auto would; until: stop lending MIN "
    "minutes before the job ends).",
    2, /* optional argument: --faas-share alone means auto */
    0,
    faas_opt_cb,
};

/* ------------------------------------------------------------------------ */
/* all contexts                                                             */
/* ------------------------------------------------------------------------ */

/* slurm_spank_init does not run in the job_script context (job_prolog and
 * job_epilog): every hook that needs the config calls this first. */
static void parse_plugstack_args(int ac, char **av)
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
            /* Reported by slurmd at startup, by every slurmstepd and sbatch
             * after; the plugin then stays inert rather than fail jobs. */
            slurm_error("faas: plugstack.conf argument '%s': %s; slurm-faas lends nothing", av[i], err);
            g_inert = 1;
            return;
        }
    }
}

/*
 * Option callback. Allocator/local context (sbatch, salloc, srun; as the
 * user): validate the spec, -1 makes sbatch print "Invalid --faas-share
 * argument" and submit nothing. Remote context (slurmstepd, root): the value
 * arrives again from the job's environment; never fail the step here.
 */
static int faas_opt_cb(int val, const char *optarg, int remote)
{
    char err[FAAS_ERR_LEN];
    struct faas_spec spec;

    (void)val;
    if (faas_spec_parse(optarg, &spec, err, sizeof(err)) != 0) {
        slurm_error(OPT_NAME ": %s", err);
        if (remote) {
            g_opt_given = 1;
            g_opt_bad = 1;
            return 0;
        }
        return -1;
    }
    g_opt_given = 1;
    g_opt_bad = 0;
    g_opt_spec = spec;
    snprintf(g_opt_text, sizeof(g_opt_text), "%s", optarg ? optarg : "");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* helpers for the slurmstepd contexts                                      */
/* ------------------------------------------------------------------------ */

/* This node's Slurm name: SLURMD_NODENAME from the job environment (remote),
 * from the process environment (job_script), else the short hostname. Several
 * slurmd -N on one host share the hostname, so the Slurm name comes first. */
static void node_name(spank_t sp, char *buf, size_t len)
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

/* A positive integer from the start of a job environment variable
 * ("2(x3),1" -> 2), or dflt. */
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

static int is_batch_step(spank_t sp)
{
    uint32_t step = 0;

    if (spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS)
        return 0;
    return step == SLURM_BATCH_SCRIPT;
}

/* ------------------------------------------------------------------------ */
/* remote context: the batch step's slurmstepd                              */
/* ------------------------------------------------------------------------ */

static void lend_batch_step(spank_t sp)
{
    const struct faas_spec *spec = g_opt_given ? &g_opt_spec : &g_cfg.default_spec;
    struct faas_lend_meta meta;
    char err[FAAS_ERR_LEN];
    uint32_t job_id = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    char *cores = NULL;
    uint64_t mem = 0;
    unsigned int tasks, cpt;
    long online;
    int n;

    if (g_opt_bad) {
        slurm_error("faas: --faas-share value did not parse in slurmstepd; lending nothing");
        return;
    }
    if (spec->mode == FAAS_SPEC_NO)
        return;
    memset(&meta, 0, sizeof(meta));
    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_ALLOC_CORES, &cores) != ESPANK_SUCCESS || !cores ||
        spank_get_item(sp, S_JOB_ALLOC_MEM, &mem) != ESPANK_SUCCESS) {
        slurm_error("faas: cannot read the job's id, owner or allocation; lending nothing");
        return;
    }
    node_name(sp, meta.node, sizeof(meta.node));

    memset(&g_alloc, 0, sizeof(g_alloc));
    n = faas_cpulist_parse(cores, g_alloc.cores, FAAS_MAX_CPUS, err, sizeof(err));
    if (n < 0) {
        slurm_error("faas: job %u: allocated cores '%s': %s; lending nothing", job_id, cores, err);
        return;
    }
    g_alloc.ncores = (unsigned int)n;
    g_alloc.mem_mb = mem;
    /* The batch step runs on the job's first node: its task count is the
     * first entry of SLURM_TASKS_PER_NODE. */
    tasks = env_leading_uint(sp, "SLURM_TASKS_PER_NODE", 1);
    cpt = env_leading_uint(sp, "SLURM_CPUS_PER_TASK", 1);
    g_alloc.used_cores = tasks * cpt;
    online = sysconf(_SC_NPROCESSORS_ONLN);
    g_alloc.online_cpus = online > 0 && online <= FAAS_MAX_CPUS ? (unsigned int)online : 0;

    if (faas_spare_compute(spec, &g_cfg, &g_alloc, &g_lend, err, sizeof(err)) != 0) {
        slurm_error("faas: job %u: %s; lending nothing", job_id, err);
        return;
    }
    if (g_lend.ncpus == 0 && g_lend.mem_mb == 0) {
        slurm_info("faas: job %u on %s has nothing to lend (cores %s, %u used, %llu MB)", job_id, meta.node,
                   cores, g_alloc.used_cores, (unsigned long long)mem);
        return;
    }
    meta.job_id = job_id;
    meta.uid = (unsigned int)uid;
    meta.gid = (unsigned int)gid;
    meta.end_time = 0; /* not known inside slurmstepd; the co-scheduler asks squeue */
    meta.until_min = spec->until_min;
    snprintf(meta.spec, sizeof(meta.spec), "%s", g_opt_given ? g_opt_text : "");
    if (faas_lend_record_write(g_cfg.spool_dir, &meta, &g_lend, "lent", err, sizeof(err)) != 0) {
        slurm_error("faas: job %u: %s; lending nothing", job_id, err);
        return;
    }
    g_lent = 1;
    g_lent_job = job_id;
    snprintf(g_lent_node, sizeof(g_lent_node), "%s", meta.node);
    slurm_info("faas: job %u on %s lends %u cores and %llu MB", job_id, meta.node, g_lend.ncpus,
               g_lend.mem_mb);
}

static void revoke_record(const char *node, unsigned int job_id, const char *who)
{
    char err[FAAS_ERR_LEN];
    int rc = faas_lend_record_revoke(g_cfg.spool_dir, node, job_id, err, sizeof(err));

    if (rc < 0)
        slurm_error("faas: job %u (%s): cannot revoke the lend record: %s", job_id, who, err);
    else if (rc == 0)
        slurm_verbose("faas: job %u on %s: lend record revoked (%s)", job_id, node, who);
}

/* ------------------------------------------------------------------------ */
/* SPANK hooks                                                              */
/* ------------------------------------------------------------------------ */

/* Every context (sbatch/salloc/srun as the user; slurmd, slurmstepd as root):
 * read plugstack.conf arguments and register --faas-share. */
int slurm_spank_init(spank_t sp, int ac, char **av)
{
    spank_context_t ctx = spank_context();

    parse_plugstack_args(ac, av);
    if (ctx == S_CTX_SLURMD || ctx == S_CTX_ERROR)
        return ESPANK_SUCCESS;
    if (spank_option_register(sp, &g_option) != ESPANK_SUCCESS)
        slurm_error("faas: cannot register --" OPT_NAME);
    return ESPANK_SUCCESS;
}

/* Remote context (slurmstepd of each step, root, after the option callbacks):
 * the batch step writes its lend record. Always returns 0: an error here
 * would drain the node. */
int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    (void)ac;
    (void)av;
    if (spank_context() != S_CTX_REMOTE || g_inert || !is_batch_step(sp))
        return ESPANK_SUCCESS;
    lend_batch_step(sp);
    return ESPANK_SUCCESS;
}

/* Every context at teardown; in the batch step's slurmstepd (root) this is
 * where the job's lend ends: normal exit, scancel, timeout. */
int slurm_spank_exit(spank_t sp, int ac, char **av)
{
    (void)sp;
    (void)ac;
    (void)av;
    if (spank_context() != S_CTX_REMOTE || !g_lent)
        return ESPANK_SUCCESS;
    revoke_record(g_lent_node, g_lent_job, "step exit");
    g_lent = 0;
    return ESPANK_SUCCESS;
}

/* job_script context (short-lived slurmstepd, root, once per job and node at
 * its end): backstop revoke in case the batch step died before its exit hook.
 * Idempotent; a missing record is fine. Always returns 0 (an error drains). */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    uint32_t job_id = 0;
    char node[256];

    parse_plugstack_args(ac, av);
    if (g_inert)
        return ESPANK_SUCCESS;
    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS) {
        slurm_error("faas: job_epilog: cannot read the job id");
        return ESPANK_SUCCESS;
    }
    node_name(sp, node, sizeof(node));
    revoke_record(node, job_id, "epilog");
    return ESPANK_SUCCESS;
}
