/*
 * spank_internal.h - what the files of the SPANK plugin share (the state of
 * one process, and one entry point per Slurm context for the dispatch file
 * spank_faas.c). Not part of any API; every symbol here stays inside
 * spank_faas.so (hidden, and spank_faas.lds exports only the SPANK ones).
 */
#ifndef FAAS_SPANK_INTERNAL_H
#define FAAS_SPANK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <slurm/spank.h>

#include "faas_core.h"

#define OPT_NAME "faas-share"

#pragma GCC visibility push(hidden)

/* spank_config.c: plugstack.conf arguments (every context) --------------- */

extern struct faas_config g_cfg;
extern int g_inert;             /* bad plugstack.conf arguments: do nothing */
extern char g_inert_why[FAAS_ERR_LEN + 96];

/* slurm_spank_init does not run in the job_script context (job_prolog and
 * job_epilog): every hook that needs the config calls this first. */
void parse_plugstack_args(int ac, char **av);
/* slurmd context, at its start: the configuration, or loudly why it is inert. */
void slurmd_report_config(void);

/* spank_option.c: --faas-share (allocator/local and remote contexts) ----- */

extern struct spank_option g_option;
extern int g_opt_given;             /* --faas-share was on the command line */
extern int g_opt_bad;               /* ...but its value did not parse (remote) */
extern struct faas_spec g_opt_spec; /* its parsed value */
extern char g_opt_text[256];        /* its text ("" when given without a value) */

/* slurm_spank_init in the allocator, local and remote contexts. */
void option_register(spank_t sp);

/* spank_stepd.c: helpers of both slurmstepd contexts (remote, job_script) */

void node_name(spank_t sp, char *buf, size_t len);
void revoke_record(const char *node, unsigned int job_id, const char *who);

/* spank_remote.c: remote context (the slurmstepd of each step, root) ----- */

void remote_init(void);
void remote_init_post_opt(spank_t sp);
void remote_exit(void);

/* The job's allocation on this node (S_JOB_ALLOC_CORES, S_JOB_ALLOC_MEM, its
 * cpuset) into g_alloc; its cores' text into *cores_text. 0, or -1 after
 * logging one line. */
extern struct faas_node_alloc g_alloc;
int read_allocation(spank_t sp, uint32_t job_id, uid_t uid, const char *node, char **cores_text);

/* spank_task.c: remote context, in each task before it execs (the user) -- */

void task_bind_to_kept(spank_t sp);

/* spank_job_script.c: job_script context (job_prolog, job_epilog) -------- */

void job_script_prolog(spank_t sp);
void job_script_epilog(spank_t sp);

#pragma GCC visibility pop

#endif
