/*
 * core_cgroup.c - the job's OS CPUs, from its cpuset cgroup (v2 or v1).
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int faas_cgroup_job_cpus(const char *root, const char *node, unsigned int uid, unsigned int job_id,
                         unsigned int *out, unsigned int max, int *version, char *err, unsigned long errlen)
{
    /* cpuset.cpus of 4096 CPUs written as single ids fits in 24 KiB. */
    char path[1024], text[24576], perr[FAAS_ERR_LEN];
    int have_node = node && node[0] != '\0';
    int k;

    if (version)
        *version = FAAS_CGROUP_NONE;
    if (!root || root[0] != '/' || !out) {
        set_err(err, errlen, "cgroup root must be an absolute path");
        return -1;
    }
    if (have_node && !node_name_ok(node, err, errlen))
        return -1;
    for (k = 0; k < 4; k++) {
        int r, n, ver = k < 2 ? FAAS_CGROUP_V2 : FAAS_CGROUP_V1;

        /* Multiple slurmd on one host (slurmd -N) name their cgroups by node. */
        if ((k == 0 || k == 2) && !have_node)
            continue;
        if (k == 0)
            r = snprintf(path, sizeof(path), "%s/system.slice/%s_slurmstepd.scope/job_%u/cpuset.cpus.effective",
                         root, node, job_id);
        else if (k == 1)
            r = snprintf(path, sizeof(path), "%s/system.slice/slurmstepd.scope/job_%u/cpuset.cpus.effective", root,
                         job_id);
        else if (k == 2)
            r = snprintf(path, sizeof(path), "%s/cpuset/slurm_%s/uid_%u/job_%u/cpuset.cpus", root, node, uid,
                         job_id);
        else
            r = snprintf(path, sizeof(path), "%s/cpuset/slurm/uid_%u/job_%u/cpuset.cpus", root, uid, job_id);
        if (r < 0 || (size_t)r >= sizeof(path)) {
            set_err(err, errlen, "cgroup path is too long");
            return -1;
        }
        r = read_small_file(path, text, sizeof(text));
        if (r == 1)
            continue;
        if (r < 0) {
            set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
            return -1;
        }
        n = faas_cpulist_parse(text, out, max, perr, sizeof(perr));
        if (n <= 0) {
            set_err(err, errlen, "%s: %s", path, n < 0 ? perr : "empty cpuset");
            return -1;
        }
        if (version)
            *version = ver;
        return n;
    }
    return 0;
}
