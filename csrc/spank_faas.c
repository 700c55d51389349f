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
 * WHERE LENDING HAPPENS (every node of the job; chosen after probing 22.05.8,
 * see docs/spank_faas.8.md):
 *   - With PrologFlags=Contain (implies Alloc), on EVERY node at allocation:
 *     job_prolog (job_script context, root) is the only hook there that sees
 *     --faas-share (spank_option_getopt) and the job's partition, user,
 *     SLURM_JOB_NTASKS and SLURM_JOB_NUM_NODES; it writes a small hand-over
 *     file <spool>/<node>/.<job>.pending. Right after it, the extern step
 *     (remote context, S_JOB_STEPID == SLURM_EXTERN_CONT) knows the job's
 *     cores (S_JOB_ALLOC_CORES), memory and node id on this node but not the
 *     option (getopt fails there, the job env is empty): it reads the
 *     hand-over and writes the lend record. Its exit hook, at job end on
 *     every node, revokes. This covers sbatch, salloc and srun allocations,
 *     array tasks (each its own job id) and het job components alike.
 *   - Without Contain the batch step lends on the batch node only (the
 *     first-step alternative would miss nodes where no step ever runs, the
 *     idlest ones).
 *   - Every step (batch or srun) that starts on a node checks the record
 *     before its tasks start: when its tasks need more cores than the job
 *     kept there (the allocation-time estimate was short: e.g. -c2 with
 *     --exclusive), the lend is revoked before the step runs.
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
 *   - PrologFlags=Alloc,Contain (probed with -N3 -n5): job_prolog runs on
 *     each node before the extern step's init. job_prolog's environment has
 *     SLURM_JOB_NTASKS, SLURM_JOB_NUM_NODES, SLURM_JOB_CPUS_PER_NODE
 *     ("3,1(x2)"), SLURM_JOB_PARTITION, SLURM_JOB_USER, SLURM_NODELIST and
 *     SPANK__SLURM_SPANK_OPTION_faas_faas_share; a bare --faas-share reads
 *     back as the text "(null)". The extern step: S_JOB_NODEID 0..N-1,
 *     S_JOB_NNODES, S_JOB_ALLOC_CORES/MEM of this node; no option, no job
 *     env. srun steps: S_JOB_LOCAL_TASK_COUNT and S_STEP_CPUS_PER_TASK are
 *     the step's tasks and -c on this node; S_STEP_ALLOC_CORES is the whole
 *     job allocation on the node (no --exact), so it says nothing.
 *   - scancel: the batch step's exit hook revokes 10-50 ms after scancel
 *     returns, job_epilog some 20 ms later. If slurmstepd itself dies
 *     (kill -9) the job stays R until cancelled or done; job_epilog then
 *     revokes (the backstop). A missing spool or a bad
 *     plugstack argument logs one error line; the node stays idle.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pwd.h>
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
/* state (one slurmstepd / sbatch / slurmd process = one copy)              */
/* ------------------------------------------------------------------------ */

static struct faas_config g_cfg;
static int g_inert;                 /* bad plugstack.conf arguments: do nothing */
static char g_inert_why[FAAS_ERR_LEN + 96];
static int g_opt_given;             /* --faas-share was on the command line */
static int g_opt_bad;               /* ...but its value did not parse (remote) */
static struct faas_spec g_opt_spec; /* its parsed value */
static char g_opt_text[256];        /* its text ("" when given without a value) */

/* What this slurmstepd must revoke in its exit hook. */
static int g_revoke_at_exit;
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
            snprintf(g_inert_why, sizeof(g_inert_why), "argument '%.64s': %s", av[i], err);
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
    /* A bare --faas-share travels to srun inside the job (and to job_prolog)
     * as SLURM_SPANK__SLURM_SPANK_OPTION_faas_faas_share=(null): the text
     * "(null)" is the bare flag, or every srun of such a job would fail. */
    if (optarg && strcmp(optarg, "(null)") == 0)
        optarg = NULL;
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
 * from the process environment (every slurmstepd), else the short hostname.
 * Several slurmd -N on one host share the hostname, so the Slurm name comes
 * first. */
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
static int read_allocation(spank_t sp, uint32_t job_id, uid_t uid, const char *node, char **cores_text)
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

static void revoke_record(const char *node, unsigned int job_id, const char *who)
{
    char err[FAAS_ERR_LEN];
    int rc = faas_lend_record_revoke(g_cfg.spool_dir, node, job_id, err, sizeof(err));

    if (rc < 0)
        slurm_error("faas: job %u (%s): cannot revoke the lend record: %s", job_id, who, err);
    else if (rc == 0)
        slurm_verbose("faas: job %u on %s: lend record revoked (%s)", job_id, node, who);
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
/* job_script context: job_prolog (root, every node, at allocation with     */
/* PrologFlags=Alloc; Contain implies it)                                   */
/* ------------------------------------------------------------------------ */

static void prolog_hand_over(spank_t sp)
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

/* ------------------------------------------------------------------------ */
/* SPANK hooks                                                              */
/* ------------------------------------------------------------------------ */

/* Every context (sbatch/salloc/srun as the user; slurmd, slurmstepd as
 * root): read plugstack.conf arguments and register --faas-share. In slurmd
 * (at its start) a bad argument is reported loudly, once per node. */
int slurm_spank_init(spank_t sp, int ac, char **av)
{
    spank_context_t ctx = spank_context();

    parse_plugstack_args(ac, av);
    if (ctx == S_CTX_SLURMD) {
        if (g_inert)
            slurm_error("faas: plugstack.conf %s; slurm-faas is INERT on this node (jobs run, nothing is "
                        "lent) until the argument is fixed and slurmd restarted",
                        g_inert_why);
        else
            slurm_info("faas: spool %s, cpu_map %s, reserve %u cores %llu MB, default %s", g_cfg.spool_dir,
                       g_cfg.cpu_map == FAAS_CPU_MAP_BLOCK ? "block" : "identity", g_cfg.reserve_cores,
                       g_cfg.reserve_mem_mb, g_cfg.default_spec.mode == FAAS_SPEC_NO ? "no" : "lend");
        return ESPANK_SUCCESS;
    }
    if (ctx == S_CTX_ERROR)
        return ESPANK_SUCCESS;
    if (g_inert && ctx == S_CTX_REMOTE)
        slurm_verbose("faas: plugstack.conf %s; lending nothing", g_inert_why);
    if (spank_option_register(sp, &g_option) != ESPANK_SUCCESS)
        slurm_error("faas: cannot register --" OPT_NAME);
    return ESPANK_SUCCESS;
}

/* Remote context (slurmstepd of each step, root, after the option callbacks,
 * before any task starts). Always returns 0: an error here drains the node. */
int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    uint32_t step;
    uint32_t ntasks = 0, cpt = 0;

    (void)ac;
    (void)av;
    if (spank_context() != S_CTX_REMOTE || g_inert)
        return ESPANK_SUCCESS;
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
    if (spank_context() != S_CTX_REMOTE || !g_revoke_at_exit)
        return ESPANK_SUCCESS;
    revoke_record(g_lent_node, g_lent_job, "step exit");
    g_revoke_at_exit = 0;
    return ESPANK_SUCCESS;
}

/* job_script context (short-lived slurmstepd, root): at allocation, hand the
 * option over to the extern step. Always returns 0 (an error drains). */
int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
    parse_plugstack_args(ac, av);
    if (g_inert)
        return ESPANK_SUCCESS;
    prolog_hand_over(sp);
    return ESPANK_SUCCESS;
}

/* job_script context (short-lived slurmstepd, root, once per job and node at
 * its end): backstop revoke in case a step died before its exit hook, and
 * the hand-over file of a job whose extern step never ran. Idempotent.
 * Always returns 0 (an error drains). */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    char node[256], err[FAAS_ERR_LEN];
    uint32_t job_id = 0;

    parse_plugstack_args(ac, av);
    if (g_inert)
        return ESPANK_SUCCESS;
    if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS) {
        slurm_error("faas: job_epilog: cannot read the job id");
        return ESPANK_SUCCESS;
    }
    node_name(sp, node, sizeof(node));
    revoke_record(node, job_id, "epilog");
    if (faas_pending_remove(g_cfg.spool_dir, node, job_id, err, sizeof(err)) < 0)
        slurm_error("faas: job %u on %s: %s", job_id, node, err);
    return ESPANK_SUCCESS;
}
