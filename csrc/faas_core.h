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
};

/* What the job holds on one node, as Slurm tells the plugin. */
struct faas_node_alloc {
    unsigned int ncores;              /* entries used in cores[] */
    unsigned int cores[4096];         /* job's allocated Slurm core ids on this node, ascending */
    unsigned int used_cores;          /* cores the job's tasks need on this node (auto) */
    unsigned long long mem_mb;        /* job's allocated memory on this node */
    unsigned int online_cpus;         /* OS CPUs online on this machine (block map) */
};

/* The result: what this node lends. */
struct faas_lend {
    unsigned int ncpus;
    unsigned int slurm_cpus[4096];    /* lent Slurm core ids, ascending */
    unsigned int os_cpus[4096];       /* OS CPU each lent core maps to (parallel to slurm_cpus) */
    unsigned long long mem_mb;
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

/* Mark an existing record revoked (rewrites it atomically with state
 * "revoked"). A missing record is not an error (returns 1). */
int faas_lend_record_revoke(const char *spool_dir, const char *node, unsigned int job_id,
                            char *err, unsigned long errlen);

#endif
