/*
 * spank_option.c - the --faas-share option: registered in the allocator,
 * local and remote contexts; its callback validates in sbatch/salloc/srun and
 * records the value again in slurmstepd.
 */
#define _POSIX_C_SOURCE 200809L

#include "spank_internal.h"

#include <stdio.h>
#include <string.h>

#include <slurm/slurm.h>

int g_opt_given;
int g_opt_bad;
struct faas_spec g_opt_spec;
char g_opt_text[256];

static int faas_opt_cb(int val, const char *optarg, int remote);

struct spank_option g_option = {
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

/* slurm_spank_init in the allocator/local context (sbatch, salloc, srun: so
 * that they know the option) and the remote one (to receive its value). */
void option_register(spank_t sp)
{
    if (spank_option_register(sp, &g_option) != ESPANK_SUCCESS)
        slurm_error("faas: cannot register --" OPT_NAME);
}
