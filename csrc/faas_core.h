/*
 * faas_core.h - the Slurm-free core of the slurm-faas SPANK plugin.
 *
 * Everything here is plain C with no Slurm dependency, so the same code is
 * linked into the SPANK plugin (spank_faas.so) and into the Python binding
 * (spank_plugin._faas_core, built by cffi from this very header).
 *
 * Keep this header parseable by cffi's cdef: no #include, no macros with
 * expressions, no inline functions. Constants are enums.
 */
#ifndef FAAS_CORE_H
#define FAAS_CORE_H

enum {
    FAAS_SPEC_NO = 0,       /* lend nothing */
    FAAS_SPEC_AUTO = 1,     /* lend what the job's tasks leave unused */
    FAAS_SPEC_EXPLICIT = 2, /* lend at most cores=N / mem=SIZE */
};

enum { FAAS_CPU_MAP_IDENTITY = 0, FAAS_CPU_MAP_BLOCK = 1 };

/* Where the OS CPU ids of a lend came from (faas_lend.cpu_source). */
enum { FAAS_CPUS_FROM_MAP = 0, FAAS_CPUS_FROM_CGROUP = 1 };

/* cgroup layouts faas_cgroup_job_cpus understands. */
enum { FAAS_CGROUP_NONE = 0, FAAS_CGROUP_V1 = 1, FAAS_CGROUP_V2 = 2 };

enum { FAAS_MAX_CPUS = 4096, FAAS_ERR_LEN = 256, FAAS_LEND_RECORD_VERSION = 1 };

/* A parsed --faas-share value. Zero means "not given" for every count. */
struct faas_spec {
    int mode;                     /* FAAS_SPEC_* */
    unsigned int cores;           /* cores=N (0: not given) */
    unsigned long long mem_mb;    /* mem=SIZE in MiB (0: not given) */
    unsigned int until_min;       /* until=MIN: stop lending MIN minutes before the job ends */
};

/* Site policy from the plugstack.conf arguments (faas_config_parse_arg). */
struct faas_config {
    char spool_dir[1024];         /* spool=DIR, default /var/spool/slurm-faas */
    int cpu_map;                  /* cpu_map=identity|block */
    unsigned int node_cpus;       /* node_cpus=N: CPUs a node declares (needed by block) */
    unsigned int reserve_cores;   /* reserve_cores=N: never lend these (per node) */
    unsigned long long reserve_mem_mb; /* reserve_mem=SIZE */
    unsigned int auto_mem_percent;     /* auto_mem_percent=P: share of unused memory auto lends (default 50) */
    struct faas_spec default_spec;     /* default=SPEC when the flag is absent (default: no) */
    unsigned int max_mem_percent;      /* max_mem_percent=P: cap of any lend, share of the job's memory (100) */
    char allow_partitions[1024];       /* allow_partitions=a,b: only jobs of these lend ("": all) */
    char allow_users[1024];            /* allow_users=u,v: only jobs of these users lend ("": all) */
    char cgroup_root[512];             /* cgroup_root=DIR: where the job's cpuset is looked up (/sys/fs/cgroup) */
};

/* What the job holds on one node, as Slurm tells the plugin. */
struct faas_node_alloc {
    unsigned int ncores;              /* entries used in cores[] */
    unsigned int cores[4096];         /* job's allocated Slurm core ids on this node, ascending */
    unsigned int used_cores;          /* cores the job's tasks need on this node (auto) */
    unsigned long long mem_mb;        /* job's allocated memory on this node */
    unsigned int online_cpus;         /* OS CPUs online on this machine (block map) */
    unsigned int nos_cpus;            /* entries in os_cpus[]: 0 when the job is not confined */
    unsigned int os_cpus[4096];       /* the job's OS CPUs on this node from its cpuset cgroup, ascending */
};

/* The result: what this node lends. */
struct faas_lend {
    unsigned int ncpus;
    unsigned int slurm_cpus[4096];    /* lent Slurm core ids, ascending */
    unsigned int os_cpus[4096];       /* OS CPU each lent core maps to (parallel to slurm_cpus) */
    unsigned long long mem_mb;
    int cpu_source;                   /* FAAS_CPUS_FROM_* */
};

/* What job_prolog hands over to the extern step of the same job and node:
 * <spool>/<node>/.<job_id>.pending (a dot file: the agent ignores it). */
struct faas_pending {
    unsigned int tasks_on_node;       /* estimate from SLURM_JOB_NTASKS / SLURM_JOB_NUM_NODES (0: unknown) */
    int given;                        /* 1: --faas-share was given; 0: the site default applies */
    char spec[256];                   /* the spec text as given ("" for a bare --faas-share) */
};

/* Identity and timing written into the lend record. */
struct faas_lend_meta {
    unsigned int job_id;
    char node[256];
    unsigned int uid;
    unsigned int gid;
    long long end_time;               /* unix seconds the job must end by; 0: unknown */
    unsigned int until_min;           /* until=MIN of the spec (0: not given) */
    char spec[256];                   /* the spec text as given ("" for the default) */
    unsigned long long job_mem_mb;    /* the job's memory on the node (0: not written); the agent's memory guard */
};

/* Parse a --faas-share value. NULL or "" means auto. Returns 0, or -1 with a
 * message naming the bad part in err. */
int faas_spec_parse(const char *text, struct faas_spec *out, char *err, unsigned long errlen);

/* Parse a size with optional K/M/G/T suffix (binary units) into MiB; a bare
 * number is MiB. Returns 0 or -1 with a message. */
int faas_size_parse_mb(const char *text, unsigned long long *out_mb, char *err, unsigned long errlen);

/* Parse a Slurm core list ("0-3,6,8-9") into ascending ids. Returns the count
 * or -1 with a message. */
int faas_cpulist_parse(const char *text, unsigned int *out, unsigned int max, char *err,
                       unsigned long errlen);

/* Defaults, then one plugstack argument "key=value" at a time. */
void faas_config_defaults(struct faas_config *cfg);
int faas_config_parse_arg(struct faas_config *cfg, const char *arg, char *err, unsigned long errlen);

/* Decide what a node lends. Never fails for a lending reason: lends nothing
 * (ncpus = 0, mem_mb = 0) when there is nothing to lend. Returns 0, or -1 with
 * a message on inconsistent input. */
int faas_spare_compute(const struct faas_spec *spec, const struct faas_config *cfg,
                       const struct faas_node_alloc *alloc, struct faas_lend *out, char *err,
                       unsigned long errlen);

/* Write <spool>/<node>/<job_id>.json atomically (temp file, fsync, rename).
 * state is "lent" or "revoked". Returns 0, or -1 with errno-style text in err. */
int faas_lend_record_write(const char *spool_dir, const struct faas_lend_meta *meta,
                           const struct faas_lend *lend, const char *state, char *err,
                           unsigned long errlen);

/* Like faas_lend_record_write(..., "lent", ...) but never replaces an
 * existing record: returns 1 (and leaves it) when one exists. */
int faas_lend_record_create(const char *spool_dir, const struct faas_lend_meta *meta,
                            const struct faas_lend *lend, char *err, unsigned long errlen);

/* Mark an existing record revoked (rewrites it atomically with state
 * "revoked"). A missing record is not an error (returns 1). */
int faas_lend_record_revoke(const char *spool_dir, const char *node, unsigned int job_id,
                            char *err, unsigned long errlen);

/* The job's OS CPUs from its cpuset cgroup under root (normally
 * /sys/fs/cgroup): v2 <root>/system.slice/[<node>_]slurmstepd.scope/job_<id>/
 * cpuset.cpus.effective, v1 <root>/cpuset/slurm[_<node>]/uid_<uid>/job_<id>/
 * cpuset.cpus. Returns the count (ascending ids in out, *version set), 0 when
 * no such cgroup exists (the job is not confined), -1 with a message when one
 * exists but cannot be read or parsed. */
int faas_cgroup_job_cpus(const char *root, const char *node, unsigned int uid, unsigned int job_id,
                         unsigned int *out, unsigned int max, int *version, char *err, unsigned long errlen);

/* Site policy: may a job of this partition and user lend? 1 yes, 0 no (the
 * reason in err). NULL or "" partition/user never match a non-empty list. */
int faas_policy_allows(const struct faas_config *cfg, const char *partition, const char *user, char *err,
                       unsigned long errlen);

/* Tasks on a node of a job from the job_prolog environment: ceil(ntasks /
 * nnodes), 0 when either is unknown/garbage. Text is what the environment
 * holds (may be NULL or junk). */
unsigned int faas_tasks_estimate(const char *ntasks, const char *nnodes);

/* The job_prolog -> extern step hand-over file (atomic). read returns 0, 1
 * when there is none, -1 on error; remove returns 0 or 1 likewise. */
int faas_pending_write(const char *spool_dir, const char *node, unsigned int job_id,
                       const struct faas_pending *p, char *err, unsigned long errlen);
int faas_pending_read(const char *spool_dir, const char *node, unsigned int job_id, struct faas_pending *p,
                      char *err, unsigned long errlen);
int faas_pending_remove(const char *spool_dir, const char *node, unsigned int job_id, char *err,
                        unsigned long errlen);

/* How many CPUs an existing record lends and whether it is still lent
 * (*lent = 1). Returns 0, 1 when there is no record, -1 on error. */
int faas_lend_record_peek(const char *spool_dir, const char *node, unsigned int job_id, unsigned int *ncpus,
                          int *lent, char *err, unsigned long errlen);

/* Like faas_lend_record_peek, and the lent Slurm core ids ("slurm_cpus", at
 * most max of them) into cores. Returns 0, 1 when there is no record, -1 on
 * error (also when the record lends more than max cores). */
int faas_lend_record_cores(const char *spool_dir, const char *node, unsigned int job_id, unsigned int *cores,
                           unsigned int max, unsigned int *ncores, int *lent, char *err, unsigned long errlen);

/* The OS CPUs the job keeps on a node: those of its allocated cores that are
 * not in lent_cores (mapped as faas_spare_compute maps lent ones: every CPU of
 * the core from the job's cpuset, else cpu_map), without the OS CPUs of lent
 * cores unless that leaves none (a block map sharing one OS CPU between kept
 * and lent cores; *shared is then 1). Ascending, unique. Returns the count,
 * or -1 with a message. */
int faas_kept_cpus(const struct faas_config *cfg, const struct faas_node_alloc *alloc, const unsigned int *lent_cores,
                   unsigned int nlent, unsigned int *out, unsigned int max, int *shared, char *err,
                   unsigned long errlen);

#endif
