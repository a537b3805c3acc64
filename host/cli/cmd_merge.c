// cmd_merge.c: `qkscope merge OUT -o all.h5`: one file over all shards of a sharded run.
// Per-window datasets become virtual datasets (HDF5 VDS) over the shards, so nothing is copied;
// the corpus aggregates are summed over the shards (heavy-hitter sketches merged).  A VDS reads
// fill values where a source is missing, so merge refuses while any shard is missing or
// incomplete, or the run is not finished.
#include <getopt.h>
#include <hdf5_hl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "cli/commands.h"
#include "io/agg_io.h"
#include "io/h5out.h"
#include "io/out_check.h"
#include "io/vocab_out.h"
#include "run/manifest.h"

typedef struct {
    char **path;       // (n) shard files
    hid_t *file;       // (n) open read-only
    int64_t *windows;  // (n)
    int n;
    int64_t total_windows, total_tokens;
    // Where the aggregates are summed from: a run's aggregates.h5 when its manifest names one (a
    // multi-rank run wrote its reduced aggregates there), otherwise its shards.
    char **agg_path;   // (n_agg)
    hid_t *agg_file;   // (n_agg) a shard's id (owned: 0) or an aggregates file's (owned: 1)
    uint8_t *agg_owned;
    int n_agg;
} Shards;

static void add_agg_source(Shards *s, char *path, hid_t file, int owned) {
    s->agg_path = qk_realloc(s->agg_path, sizeof(char *) * (s->n_agg + 1));
    s->agg_file = qk_realloc(s->agg_file, sizeof(hid_t) * (s->n_agg + 1));
    s->agg_owned = qk_realloc(s->agg_owned, s->n_agg + 1);
    s->agg_path[s->n_agg] = path, s->agg_file[s->n_agg] = file, s->agg_owned[s->n_agg++] = (uint8_t)owned;
}

// A multi-rank run's aggregates file: complete, from the run's configuration, over its windows.
static int add_aggregates_file(const char *dir, const char *name, const char *hash, int64_t windows, Shards *s) {
    char *path = qk_path_join(dir, name);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        int rc = qk_err("%s: aggregates missing or unreadable; refusing to merge", path);
        free(path);
        return rc;
    }
    add_agg_source(s, path, f, 1);
    char *h = qk_h5_attr_read_str(f, "config_hash");
    int same = h && !strcmp(h, hash);
    free(h);
    int64_t w = qk_h5_attr_read_int(f, "windows");
    if (qk_h5_attr_read_int(f, "complete") != 1) return qk_err("%s: incomplete; refusing to merge", path);
    if (!same) return qk_err("%s: config_hash differs from the manifest's", path);
    if (w != windows) return qk_err("%s: covers %lld windows, the shards %lld", path, (long long)w, (long long)windows);
    return 0;
}

// Reads OUT/manifest.json and opens every shard it lists, checking each is complete and from
// the same configuration.
// Appends the shards of one sharded run folder (its manifest.json) to *s, checking each is
// complete, from that run's configuration and in window order.
static int add_run(const char *dir, Shards *s) {
    char *mpath = qk_path_join(dir, "manifest.json");
    QkManifest m;
    if (qk_manifest_read(&m, dir)) return free(mpath), -1;
    int rc = 0;
    if (!m.complete)
        rc = qk_err("%s: the run is not complete (resume it with qkscope run --resume); merging now would hide the rest",
                    mpath);
    int n = rc ? 0 : m.n_shards;
    if (!rc && n == 0) rc = qk_err("%s: no shards", mpath);
    s->path = qk_realloc(s->path, sizeof(char *) * (s->n + n + 1));
    s->file = qk_realloc(s->file, sizeof(hid_t) * (s->n + n + 1));
    s->windows = qk_realloc(s->windows, sizeof(int64_t) * (s->n + n + 1));
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    int64_t run_windows = 0;  // first_window counts from 0 in every run (every part of a sweep)
    int first = s->n;
    for (int k = 0; !rc && k < n; k++) {
        int i = s->n++;
        s->path[i] = qk_path_join(dir, m.shards[k]);
        if ((s->file[i] = H5Fopen(s->path[i], H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) {
            rc = qk_err("%s: shard missing or unreadable; refusing to merge (a virtual dataset would fill it silently)",
                        s->path[i]);
            break;
        }
        char *h = qk_h5_attr_read_str(s->file[i], "config_hash");
        int same = h && !strcmp(h, m.config_hash);
        free(h);
        int64_t first = qk_h5_attr_read_int(s->file[i], "first_window");
        s->windows[i] = qk_h5_attr_read_int(s->file[i], "windows");
        if (qk_h5_attr_read_int(s->file[i], "complete") != 1) rc = qk_err("%s: shard incomplete; refusing to merge", s->path[i]);
        else if (!same) rc = qk_err("%s: config_hash differs from the manifest's", s->path[i]);
        else if (first != run_windows)
            rc = qk_err("%s: first_window %lld, expected %lld (shards out of order?)", s->path[i], (long long)first,
                        (long long)run_windows);
        run_windows += s->windows[i];
        s->total_windows += s->windows[i];
        s->total_tokens += qk_h5_attr_read_int(s->file[i], "tokens_processed");
    }
    if (!rc && m.aggregates) rc = add_aggregates_file(dir, m.aggregates, m.config_hash, run_windows, s);
    else
        for (int i = first; !rc && i < s->n; i++) add_agg_source(s, qk_strdup(s->path[i]), s->file[i], 0);
    qk_manifest_free(&m);
    free(mpath);
    return rc;
}

// OUT is one sharded run (manifest.json) or a Slurm sweep (plan.json: parts OUT/part-NNN, each a
// sharded run, merged in part order; every part must be there and complete).
static int open_shards(const char *dir, Shards *s) {
    memset(s, 0, sizeof *s);
    char *ppath = qk_path_join(dir, "plan.json");
    int rc, tasks, settings;
    if (!qk_file_exists(ppath)) rc = add_run(dir, s);
    else {
        rc = qk_plan_read(dir, &tasks, &settings);
        for (int p = 0; !rc && p < tasks; p++) {
            char part[64];
            snprintf(part, sizeof part, "part-%03d", p);
            char *pdir = qk_path_join(dir, part);
            if (!qk_file_exists(pdir)) rc = qk_err("%s: part missing (see qkscope status); refusing to merge", pdir);
            else rc = add_run(pdir, s);
            free(pdir);
        }
    }
    free(ppath);
    return rc;
}

static void close_shards(Shards *s) {
    for (int i = 0; i < s->n; i++) {
        if (s->file[i] > 0) H5Fclose(s->file[i]);
        free(s->path[i]);
    }
    for (int i = 0; i < s->n_agg; i++) {
        if (s->agg_owned[i] && s->agg_file[i] > 0) H5Fclose(s->agg_file[i]);
        free(s->agg_path[i]);
    }
    free(s->path), free(s->file), free(s->windows), free(s->agg_path), free(s->agg_file), free(s->agg_owned);
    memset(s, 0, sizeof *s);
}

// The shard path as the VDS stores it: relative to the merged file's folder when the shards lie
// below it (the pair can then move together), else absolute.
static char *source_name(const char *shard, const char *out_path) {
    char abs_shard[PATH_MAX], abs_dir[PATH_MAX], *copy = qk_strdup(out_path);
    const char *dir = dirname(copy);
    if (!realpath(shard, abs_shard) || !realpath(dir, abs_dir)) {
        free(copy);
        return qk_strdup(shard);
    }
    free(copy);
    size_t n = strlen(abs_dir);
    if (!strncmp(abs_shard, abs_dir, n) && abs_shard[n] == '/') return qk_strdup(abs_shard + n + 1);
    return qk_strdup(abs_shard);
}

typedef struct {
    const Shards *s;
    QkH5Out *out;
    char **src;  // (n) source file names for the VDS
    int rc;
} VisitCtx;

// One virtual dataset over the same dataset of every shard, stacked along dim 0 (windows): each
// shard's of shard 0's rank and shape past dim 0.
static int make_vds(VisitCtx *v, const char *name) {
    const Shards *s = v->s;
    hid_t d0 = H5Dopen2(s->file[0], name, H5P_DEFAULT), sp0 = H5Dget_space(d0), type = H5Dget_type(d0);
    hsize_t dims[H5S_MAX_RANK], maxd[H5S_MAX_RANK];
    int nd = H5Sget_simple_extent_dims(sp0, dims, maxd);
    if (nd < 1 || maxd[0] != H5S_UNLIMITED) {  // not per-window data
        H5Tclose(type), H5Sclose(sp0), H5Dclose(d0);
        return 0;
    }
    dims[0] = (hsize_t)s->total_windows;
    hid_t vspace = H5Screate_simple(nd, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK];
    int rc = 0;
    for (int i = 0; i < s->n && !rc; i++) {
        hid_t di = H5Dopen2(s->file[i], name, H5P_DEFAULT);
        if (di < 0) {
            rc = qk_err("%s: dataset '%s' missing", s->path[i], name);
            break;
        }
        hid_t spi = H5Dget_space(di);
        hsize_t di_dims[H5S_MAX_RANK];
        int same = H5Sget_simple_extent_dims(spi, di_dims, NULL) == nd;
        for (int k = 1; same && k < nd; k++) same = di_dims[k] == dims[k];
        for (int k = 0; same && k < nd; k++) count[k] = k ? dims[k] : di_dims[0];
        hid_t src = same ? H5Screate_simple(nd, count, NULL) : -1;
        if (!same)
            rc = qk_err("%s: dataset '%s': not of %s's rank and shape past dim 0", s->path[i], name, s->path[0]);
        else if (H5Sselect_hyperslab(vspace, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                 H5Pset_virtual(dcpl, vspace, v->src[i], name, src) < 0)
            rc = qk_err("HDF5: cannot map %s of %s", name, s->path[i]);
        if (src >= 0) H5Sclose(src);
        H5Sclose(spi), H5Dclose(di);
        start[0] += count[0];
    }
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t vd = rc ? -1 : H5Dcreate2(v->out->file, name, type, vspace, lcpl, dcpl, H5P_DEFAULT);
    if (!rc && vd < 0) rc = qk_err("HDF5: cannot create virtual dataset %s", name);
    for (int k = 0; !rc && k < nd; k++) {  // the same dimension names
        char label[64] = "";
        if (H5DSget_label(d0, (unsigned)k, label, sizeof label) > 0) H5DSset_label(vd, (unsigned)k, label);
    }
    if (vd >= 0) H5Dclose(vd);
    H5Pclose(lcpl), H5Pclose(dcpl), H5Sclose(vspace), H5Tclose(type), H5Sclose(sp0), H5Dclose(d0);
    return rc;
}

static herr_t copy_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op);

static herr_t visit(hid_t obj, const char *name, const H5O_info_t *info, void *op) {
    VisitCtx *v = op;
    if (!strncmp(name, "aggregates", 10) || !strncmp(name, "summary", 7) || !strncmp(name, "vocab", 5)) return 0;
    if (info->type == H5O_TYPE_GROUP && strcmp(name, ".")) {  // a record group: its attributes too
        hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
        H5Pset_create_intermediate_group(lcpl, 1);
        hid_t dst = H5Gcreate2(v->out->file, name, lcpl, H5P_DEFAULT, H5P_DEFAULT), src = H5Gopen2(obj, name, H5P_DEFAULT);
        herr_t e = dst < 0 || src < 0 ? -1 : H5Aiterate2(src, H5_INDEX_NAME, H5_ITER_INC, NULL, copy_attr, &dst);
        if (dst >= 0) H5Gclose(dst);
        if (src >= 0) H5Gclose(src);
        H5Pclose(lcpl);
        if (e < 0) return v->rc = qk_err("HDF5: cannot copy group %s", name), -1;
        return 0;
    }
    if (info->type != H5O_TYPE_DATASET) return 0;
    char path[512];
    snprintf(path, sizeof path, "/%s", name);
    if ((v->rc = make_vds(v, path))) return -1;
    return 0;
}

// Root attributes of shard 0, except those that describe one shard.
static herr_t copy_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op) {
    (void)info;
    static const char *const skip[] = {"complete", "shard", "first_window", "windows", "tokens_processed"};
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        if (!strcmp(name, skip[i]) || !strncmp(name, "time_", 5)) return 0;
    hid_t dst = *(hid_t *)op, a = H5Aopen(loc, name, H5P_DEFAULT), t = H5Aget_type(a), sp = H5Aget_space(a);
    size_t n = H5Tget_size(t) * (size_t)H5Sget_simple_extent_npoints(sp);
    void *buf = qk_malloc(n + 1);
    H5Aread(a, t, buf);
    hid_t b = H5Acreate2(dst, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = b < 0 ? -1 : H5Awrite(b, t, buf);
    if (b >= 0) H5Aclose(b);
    free(buf);
    H5Sclose(sp), H5Tclose(t), H5Aclose(a);
    return e < 0 ? -1 : 0;
}

// The aggregates of every head, summed over the aggregate sources (shards or aggregates files).
static int merge_aggregates(const Shards *s, QkH5Out *out) {
    hid_t f0 = s->file[0];
    int L = 0, H = 0, rc = 0;
    // The heads: shard 0's summary/ (agg_read_summary_heads: checked as untrusted input)
    int64_t nh = 0;
    int32_t *hl, *hh;
    if (agg_read_summary_heads(f0, s->path[0], &hl, &hh, &nh, &L, &H)) return -1;
    HeadAggregates *agg = qk_calloc((size_t)L * H, sizeof(HeadAggregates));
    const HeadAggregates **ptr = qk_calloc((size_t)L * H, sizeof(HeadAggregates *));
    for (int i = 0; i < nh && !rc; i++) {
        char g[64];
        snprintf(g, sizeof g, "aggregates/%d.%d", hl[i], hh[i]);
        if (H5Lexists(f0, g, H5P_DEFAULT) <= 0) {
            rc = qk_err("%s: group %s (summary/ lists its head) is missing", s->path[0], g);
            break;
        }
        hid_t grp = H5Gopen2(f0, g, H5P_DEFAULT), dm = H5Dopen2(grp, "query_marginal", H5P_DEFAULT);
        hid_t msp = H5Dget_space(dm);
        int m = (int)H5Sget_simple_extent_npoints(msp);
        int cap = (int)qk_h5_attr_read_int(grp, "sketch_capacity");
        H5Sclose(msp), H5Dclose(dm), H5Gclose(grp);
        if (m < 1) {
            rc = qk_err("%s: %s/query_marginal is missing or empty", s->path[0], g);
            break;
        }
        HeadAggregates *a = &agg[hl[i] * H + hh[i]];
        head_agg_init(a, m, cap > 0 ? cap : 1);
        ptr[hl[i] * H + hh[i]] = a;
        for (int k = 0; k < s->n_agg && !rc; k++) rc = agg_read_add(s->agg_file[k], s->agg_path[k], hl[i], hh[i], a);
        // Example contexts always from the shards (an aggregates.h5 has none), their corpus
        // window indices rebased to the merged file's rows.
        int64_t row = 0;
        for (int k = 0; k < s->n && !rc; k++) {
            snprintf(g, sizeof g, "aggregates/%d.%d/", hl[i], hh[i]);
            rc = pair_examples_read_add(&a->examples, s->file[k], s->path[k], g,
                                        row - qk_h5_attr_read_int(s->file[k], "first_window"));
            row += s->windows[k];
        }
    }
    if (!rc) rc = agg_write_all(out, NULL, L, H, ptr);
    if (!rc) agg_print_summary(stdout, L, H, ptr);
    for (int i = 0; i < L * H; i++)
        if (ptr[i]) head_agg_free(&agg[i]);
    free(agg), free(ptr), free(hl), free(hh);
    return rc;
}

static int merge(const char *dir, const char *out_path) {
    Shards s;
    QkH5Out out = {0};
    if (qk_out_check_file(out_path, 1)) return -1;
    int rc = open_shards(dir, &s) || qk_h5_create(&out, out_path);
    VisitCtx v = {.s = &s, .out = &out};
    if (!rc) {
        v.src = qk_calloc(s.n, sizeof(char *));
        for (int i = 0; i < s.n; i++) v.src[i] = source_name(s.path[i], out_path);
        if (H5Aiterate2(s.file[0], H5_INDEX_NAME, H5_ITER_INC, NULL, copy_attr, &out.file) < 0)
            rc = qk_err("%s: cannot copy the root attributes", s.path[0]);
    }
    if (!rc && H5Ovisit2(s.file[0], H5_INDEX_NAME, H5_ITER_INC, visit, &v, H5O_INFO_BASIC) < 0)
        rc = v.rc ? -1 : qk_err("%s: cannot walk the shard", s.path[0]);
    if (!rc) rc = merge_aggregates(&s, &out);
    if (!rc) rc = qk_vocab_merge(out.file, s.file, (const char *const *)s.path, s.n);  // union of the pieces
    if (!rc) rc = qk_h5_attr_int(out.file, "tokens_processed", s.total_tokens) ||
                  qk_h5_attr_int(out.file, "windows", s.total_windows) || qk_h5_attr_int(out.file, "shards", s.n) ||
                  qk_h5_attr_str(out.file, "merged_from", dir);
    if (!rc) rc = qk_h5_finish(&out);
    else if (out.file) qk_h5_abort(&out);
    for (int i = 0; v.src && i < s.n; i++) free(v.src[i]);
    free(v.src);
    close_shards(&s);
    return rc;
}

int cmd_merge(int argc, char **argv) {
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *out = NULL;
    optind = 1;
    opterr = 0;
    for (int ch; (ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1;) {
        if (ch == 'o') out = optarg;
        else if (ch == 'h') {
            printf("usage: qkscope merge OUT -o all.h5\n\n"
                   "One file over every shard of a sharded `qkscope run` (OUT/manifest.json): per-window datasets\n"
                   "as HDF5 virtual datasets over the shards (keep the shards; they are read through it), the\n"
                   "corpus aggregates summed over shards (a multi-rank run's: its aggregates.h5, reduced over\n"
                   "the ranks), and the per-head summary printed.  Refuses while any shard is missing or\n"
                   "incomplete or the run is unfinished.\n\n"
                   "  -o, --output FILE  the merged file (written as FILE.tmp, renamed when complete)\n");
            return QK_EXIT_OK;
        } else
            return fprintf(stderr, "qkscope merge: unknown or incomplete option '%s' (--help)\n", argv[optind - 1]), QK_EXIT_USAGE;
    }
    if (optind != argc - 1 || !out) {
        fprintf(stderr, "qkscope merge: expected OUT and -o all.h5 (--help)\n");
        return QK_EXIT_USAGE;
    }
    if (merge(argv[optind], out)) {
        fprintf(stderr, "qkscope merge: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    return QK_EXIT_OK;
}
