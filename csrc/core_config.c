/*
 * core_config.c - the site's word: plugstack.conf arguments into a
 * struct faas_config with explicit defaults, and the policy it sets (which
 * partitions and users may lend).
 */
#define _POSIX_C_SOURCE 200809L

#include "core_internal.h"

#include <stdio.h>
#include <string.h>

#define SPOOL_DEFAULT "/var/spool/slurm-faas"
#define CGROUP_ROOT_DEFAULT "/sys/fs/cgroup"

/* ------------------------------------------------------------------------ */
/* plugstack.conf arguments                                                 */
/* ------------------------------------------------------------------------ */

void faas_config_defaults(struct faas_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "%s", SPOOL_DEFAULT);
    cfg->cpu_map = FAAS_CPU_MAP_IDENTITY;
    cfg->node_cpus = 0;
    cfg->reserve_cores = 0;
    cfg->reserve_mem_mb = 0;
    cfg->auto_mem_percent = 50;
    cfg->default_spec.mode = FAAS_SPEC_NO;
    cfg->max_mem_percent = 100;
    cfg->allow_partitions[0] = '\0';
    cfg->allow_users[0] = '\0';
    snprintf(cfg->cgroup_root, sizeof(cfg->cgroup_root), "%s", CGROUP_ROOT_DEFAULT);
}

/* A comma list of names: non-empty items of [A-Za-z0-9._@+-] only. */
static int name_list_ok(const char *val, const char *key, char *err, unsigned long errlen)
{
    const char *c;
    size_t item = 0;

    if (val[0] == '\0') {
        set_err(err, errlen, "%s needs a comma-separated list of names", key);
        return 0;
    }
    for (c = val;; c++) {
        if (*c == ',' || *c == '\0') {
            if (item == 0) {
                set_err(err, errlen, "%s has an empty item", key);
                return 0;
            }
            item = 0;
            if (*c == '\0')
                return 1;
            continue;
        }
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '.' ||
              *c == '_' || *c == '-' || *c == '@' || *c == '+')) {
            set_err(err, errlen, "%s: bad character '%c' in a name", key, *c);
            return 0;
        }
        item++;
    }
}

/* Copy an absolute path argument into dst, keeping `reserve` bytes free for
 * what is appended to it later. */
static int set_abs_path(char *dst, size_t cap, size_t reserve, const char *key, const char *val,
                        const char *shown, char *err, unsigned long errlen)
{
    if (val[0] != '/') {
        set_err(err, errlen, "%s must be an absolute path, got '%s'", key, shown);
        return -1;
    }
    if (strlen(val) >= cap - reserve) {
        set_err(err, errlen, "%s path is too long", key);
        return -1;
    }
    snprintf(dst, cap, "%s", val);
    return 0;
}

int faas_config_parse_arg(struct faas_config *cfg, const char *arg, char *err, unsigned long errlen)
{
    const char *eq, *val;
    size_t klen;
    unsigned long long v;
    char q[72];

    if (!cfg || !arg) {
        set_err(err, errlen, "missing argument");
        return -1;
    }
    eq = strchr(arg, '=');
    if (!eq || eq == arg) {
        set_err(err, errlen, "argument '%s' is not key=value", excerpt(q, sizeof(q), arg, strlen(arg)));
        return -1;
    }
    klen = (size_t)(eq - arg);
    val = eq + 1;
    excerpt(q, sizeof(q), val, strlen(val));

    if (keyeq(arg, klen, "spool")) {
        /* leave room for /<node>/<job>.json */
        if (set_abs_path(cfg->spool_dir, sizeof(cfg->spool_dir), 300, "spool", val, q, err, errlen))
            return -1;
    } else if (keyeq(arg, klen, "cpu_map")) {
        if (strcmp(val, "identity") == 0) {
            cfg->cpu_map = FAAS_CPU_MAP_IDENTITY;
        } else if (strcmp(val, "block") == 0) {
            cfg->cpu_map = FAAS_CPU_MAP_BLOCK;
        } else {
            set_err(err, errlen, "cpu_map must be identity or block, got '%s'", q);
            return -1;
        }
    } else if (keyeq(arg, klen, "node_cpus")) {
        if (parse_udec(val, strlen(val), FAAS_MAX_CPUS, &v) != 0) {
            set_err(err, errlen, "node_cpus must be an integer 0..%d, got '%s'", FAAS_MAX_CPUS, q);
            return -1;
        }
        cfg->node_cpus = (unsigned int)v;
    } else if (keyeq(arg, klen, "reserve_cores")) {
        if (parse_udec(val, strlen(val), FAAS_MAX_CPUS, &v) != 0) {
            set_err(err, errlen, "reserve_cores must be an integer 0..%d, got '%s'", FAAS_MAX_CPUS, q);
            return -1;
        }
        cfg->reserve_cores = (unsigned int)v;
    } else if (keyeq(arg, klen, "reserve_mem")) {
        char serr[FAAS_ERR_LEN];

        if (strcmp(val, "0") == 0) {
            cfg->reserve_mem_mb = 0;
        } else if (faas_size_parse_mb(val, &cfg->reserve_mem_mb, serr, sizeof(serr)) != 0) {
            set_err(err, errlen, "reserve_mem: %s", serr);
            return -1;
        }
    } else if (keyeq(arg, klen, "auto_mem_percent")) {
        if (parse_udec(val, strlen(val), 100, &v) != 0 || v == 0) {
            set_err(err, errlen, "auto_mem_percent must be an integer 1..100, got '%s'", q);
            return -1;
        }
        cfg->auto_mem_percent = (unsigned int)v;
    } else if (keyeq(arg, klen, "default")) {
        char serr[FAAS_ERR_LEN];

        if (val[0] == '\0') {
            set_err(err, errlen, "default needs a spec (%s)", SPEC_GRAMMAR);
            return -1;
        }
        if (faas_spec_parse(val, &cfg->default_spec, serr, sizeof(serr)) != 0) {
            set_err(err, errlen, "default: %s", serr);
            return -1;
        }
    } else if (keyeq(arg, klen, "max_mem_percent")) {
        if (parse_udec(val, strlen(val), 100, &v) != 0) {
            set_err(err, errlen, "max_mem_percent must be an integer 0..100, got '%s'", q);
            return -1;
        }
        cfg->max_mem_percent = (unsigned int)v;
    } else if (keyeq(arg, klen, "allow_partitions") || keyeq(arg, klen, "allow_users")) {
        int parts = keyeq(arg, klen, "allow_partitions");
        char *dst = parts ? cfg->allow_partitions : cfg->allow_users;
        size_t cap = parts ? sizeof(cfg->allow_partitions) : sizeof(cfg->allow_users);

        if (!name_list_ok(val, parts ? "allow_partitions" : "allow_users", err, errlen))
            return -1;
        if (strlen(val) >= cap) {
            set_err(err, errlen, "%s is too long", parts ? "allow_partitions" : "allow_users");
            return -1;
        }
        snprintf(dst, cap, "%s", val);
    } else if (keyeq(arg, klen, "cgroup_root")) {
        /* leave room for the job's cgroup path below it */
        if (set_abs_path(cfg->cgroup_root, sizeof(cfg->cgroup_root), 200, "cgroup_root", val, q, err,
                         errlen))
            return -1;
    } else {
        set_err(err, errlen,
                "unknown key '%s' (expected spool, cpu_map, node_cpus, reserve_cores, reserve_mem, "
                "auto_mem_percent, max_mem_percent, allow_partitions, allow_users, cgroup_root or default)",
                excerpt(q, sizeof(q), arg, klen));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* site policy                                                              */
/* ------------------------------------------------------------------------ */

static int in_name_list(const char *list, const char *name)
{
    size_t nlen;
    const char *p = list;

    if (!name || name[0] == '\0')
        return 0;
    nlen = strlen(name);
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t ilen = comma ? (size_t)(comma - p) : strlen(p);

        if (ilen == nlen && memcmp(p, name, nlen) == 0)
            return 1;
        if (!comma)
            break;
        p = comma + 1;
    }
    return 0;
}

int faas_policy_allows(const struct faas_config *cfg, const char *partition, const char *user, char *err,
                       unsigned long errlen)
{
    if (!cfg) {
        set_err(err, errlen, "missing argument");
        return 0;
    }
    if (cfg->allow_partitions[0] != '\0' && !in_name_list(cfg->allow_partitions, partition)) {
        set_err(err, errlen, "partition '%.64s' may not lend (allow_partitions=%.128s)",
                partition ? partition : "", cfg->allow_partitions);
        return 0;
    }
    if (cfg->allow_users[0] != '\0' && !in_name_list(cfg->allow_users, user)) {
        set_err(err, errlen, "user '%.64s' may not lend (allow_users=%.128s)", user ? user : "",
                cfg->allow_users);
        return 0;
    }
    return 1;
}
