// cmd_report.c: `qkscope report RUN.h5 [STATIC.h5] -o report.html`: one self-contained HTML page
// (inline CSS and SVG, no script, no network) for a researcher to read a run: a layers x heads
// grid per fidelity metric, and per recorded head its heaviest feature pairs labelled with the
// tokens of their strongest example, the example contexts with the query and key tokens marked,
// the strongest weights-only entries, and Neuronpedia links for known SAE releases.
// Sections carry ids (`metrics`, `heads`, `head-L.H`) that tests/test_report.sh checks.
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "cli/commands.h"
#include "io/out_check.h"
#include "io/report_data.h"

enum { EX_PER_PAIR = 3, CONTEXT_BEFORE = 10 };

static void usage(FILE *f) {
    fprintf(f, "usage: qkscope report RUN.h5 [STATIC.h5] -o report.html\n\n"
               "One self-contained HTML page (no network) of a run: per-head fidelity metrics as layers x heads\n"
               "grids, and for each recorded head its heaviest (query feature, key feature) pairs with token\n"
               "labels, example contexts (query token and key token marked) and the strongest static-map\n"
               "entries (with STATIC.h5 from `qkscope static` of the same model).  Token text needs a run\n"
               "with [corpus] vocab (docs/FORMAT.md vocab/); otherwise tokens show as #id.\n"
               "  RUN.h5     a `qkscope run` file, or `qkscope merge`'s file of a sharded run\n"
               "  -o FILE    the page to write (via FILE.tmp, renamed when complete)\n"
               "  -h, --help this text\n");
}

// HTML-escaped bytes; whitespace made visible enough to read (newline as a return symbol).
static void esc(FILE *o, const uint8_t *s, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '<': fputs("&lt;", o); break;
        case '>': fputs("&gt;", o); break;
        case '&': fputs("&amp;", o); break;
        case '"': fputs("&quot;", o); break;
        case '\n': fputs("\xe2\x8f\x8e", o); break;  // U+23CE
        case '\r': break;
        case '\t': fputc(' ', o); break;
        default: fputc(s[i] < 0x20 ? '?' : s[i], o);
        }
    }
}

static void token(FILE *o, const ReportData *d, int32_t id) {
    int64_t n;
    const uint8_t *p = report_piece(d, id, &n);
    if (p) esc(o, p, n);
    else fprintf(o, "#%d", id);
}

static void feature_link(FILE *o, const ReportHead *h, int32_t f) {
    if (h->np_sae[0]) fprintf(o, "<a href=\"https://neuronpedia.org/gpt2-small/%s/%d\">%d</a>", h->np_sae, f, f);
    else fprintf(o, "%d", f);
}

// Colour of value v in [lo, hi] (light to dark blue); grey for NaN.
static void colour(double v, double lo, double hi, char *buf, size_t n) {
    if (isnan(v)) {
        snprintf(buf, n, "#ddd");
        return;
    }
    double t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    snprintf(buf, n, "rgb(%d,%d,%d)", (int)(240 - 200 * t), (int)(245 - 150 * t), (int)(255 - 100 * t));
}

static int metric_index(const ReportData *d, const char *name) {
    for (int m = 0; m < d->M; m++)
        if (!strcmp(d->metric_names[m], name)) return m;
    return -1;
}

// One layers x heads SVG grid of metric m.
static void grid(FILE *o, const ReportData *d, int m, const char *title) {
    const int cw = 46, ch = 22, left = 34, top = 34;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < d->L * d->H; i++) {
        double v = d->means[(size_t)i * d->M + m];
        if (!isnan(v)) lo = v < lo ? v : lo, hi = v > hi ? v : hi;
    }
    int W = left + d->H * cw + 4, Hh = top + d->L * ch + 4;
    fprintf(o, "<figure class=\"grid\"><figcaption>%s <code>%s</code></figcaption>\n", title, d->metric_names[m]);
    fprintf(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" role=\"img\" aria-label=\"%s\">\n", W, Hh,
            d->metric_names[m]);
    fprintf(o, "<text x=\"%d\" y=\"12\" class=\"ax\">head</text><text x=\"2\" y=\"%d\" class=\"ax\">L</text>\n", left, top - 4);
    for (int h = 0; h < d->H; h++) fprintf(o, "<text x=\"%d\" y=\"28\" class=\"ax\">%d</text>", left + h * cw + cw / 2 - 4, h);
    for (int l = 0; l < d->L; l++) {
        fprintf(o, "<text x=\"4\" y=\"%d\" class=\"ax\">%d</text>", top + l * ch + 15, l);
        for (int h = 0; h < d->H; h++) {
            double v = d->means[((size_t)l * d->H + h) * d->M + m];
            char c[32];
            colour(v, lo, hi, c, sizeof c);
            fprintf(o, "<g><title>%d.%d %s = %.6g</title><rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>",
                    l, h, d->metric_names[m], v, left + h * cw, top + l * ch, cw - 2, ch - 2, c);
            if (!isnan(v))
                fprintf(o, "<text x=\"%d\" y=\"%d\" class=\"v\">%.3g</text>", left + h * cw + 3, top + l * ch + 15, v);
            fputs("</g>", o);
        }
        fputc('\n', o);
    }
    fputs("</svg></figure>\n", o);
}

// An example's context: CONTEXT_BEFORE tokens before the key, the key, the tokens up to the
// query (long gaps elided), the query; key and query marked.
static int context(FILE *o, const ReportData *d, const ReportExample *e, int32_t *tok) {
    if (report_tokens(d, e->window, tok)) return -1;
    int lo = e->kpos > CONTEXT_BEFORE ? e->kpos - CONTEXT_BEFORE : 0;
    fputs("<span class=\"ctx\">", o);
    if (lo) fputs("\xe2\x80\xa6", o);
    for (int p = lo; p <= e->qpos; p++) {
        if (p > e->kpos + 6 && p < e->qpos - 8) {  // elide the middle of a long gap
            fputs(" \xe2\x80\xa6 ", o);
            p = e->qpos - 8;
        }
        const char *cls = p == e->qpos && p == e->kpos ? "qk" : p == e->qpos ? "q" : p == e->kpos ? "k" : NULL;
        if (cls) fprintf(o, "<mark class=\"%s\">", cls);
        token(o, d, tok[p]);
        if (cls) fputs("</mark>", o);
    }
    fputs("</span>", o);
    return 0;
}

static int head_section(FILE *o, const ReportData *d, const ReportHead *h, int32_t *tok) {
    fprintf(o, "<section id=\"head-%d.%d\" class=\"head\"><h3>Head %d.%d</h3>\n", h->layer, h->head, h->layer, h->head);
    const double *mm = d->means + ((size_t)h->layer * d->H + h->head) * d->M;
    int t1 = metric_index(d, "top1"), kl = metric_index(d, "kl_both"), es = metric_index(d, "error_share"),
        ov = metric_index(d, "overlap"), oc = metric_index(d, "overlap_chance");
    if (t1 >= 0 && kl >= 0 && es >= 0 && ov >= 0 && oc >= 0)
        fprintf(o, "<p class=\"m\">top-1 %.3f &middot; KL %.3g nats &middot; error share %.3f &middot; overlap %.3f (chance %.3f)</p>\n",
                mm[t1], mm[kl], mm[es], mm[ov], mm[oc]);
    fputs("<h4>Heaviest feature pairs (query feature f looks for key feature g)</h4>\n<table class=\"pairs\"><tr><th>#</th>"
          "<th>f</th><th>g</th><th>summed |term|</th><th>count</th><th>mean term</th><th>strongest example: query &rarr; key</th></tr>\n",
          o);
    for (int i = 0; i < h->n_pairs; i++) {
        const ReportPair *p = &h->pairs[i];
        fprintf(o, "<tr><td>%d</td><td>", i);
        feature_link(o, h, p->f);
        fputs("</td><td>", o);
        feature_link(o, h, p->g);
        fprintf(o, "</td><td>%.4g</td><td>%lld</td><td>%+.4g</td><td>", p->weight, (long long)p->count,
                p->count ? p->sum / p->count : NAN);
        for (int e = 0; e < h->n_ex; e++)
            if (h->ex[e].f == p->f && h->ex[e].g == p->g) {
                if (report_tokens(d, h->ex[e].window, tok)) return -1;
                fputs("<mark class=\"q\">", o);
                token(o, d, tok[h->ex[e].qpos]);
                fputs("</mark> &rarr; <mark class=\"k\">", o);
                token(o, d, tok[h->ex[e].kpos]);
                fputs("</mark>", o);
                break;
            }
        fputs("</td></tr>\n", o);
    }
    fputs("</table>\n<h4>Example contexts (<mark class=\"k\">key</mark> &hellip; <mark class=\"q\">query</mark>)</h4>\n<ul class=\"ex\">\n", o);
    for (int i = 0; i < h->n_pairs && i < 5; i++) {
        int shown = 0;
        for (int e = 0; e < h->n_ex && shown < EX_PER_PAIR; e++) {
            const ReportExample *x = &h->ex[e];
            if (x->f != h->pairs[i].f || x->g != h->pairs[i].g) continue;
            fprintf(o, "<li><span class=\"tag\">%d&rarr;%d %+.3g</span> <span class=\"where\">window %lld, key %d, query %d</span> ",
                    x->f, x->g, x->term, (long long)x->window, x->kpos, x->qpos);
            if (context(o, d, x, tok)) return -1;
            fputs("</li>\n", o);
            shown++;
        }
    }
    fputs("</ul>\n", o);
    if (h->n_static) {
        fputs("<h4>Strongest weights-only entries S[f, g] (static map)</h4>\n<table class=\"static\"><tr><th>f</th><th>g</th>"
              "<th>S[f, g]</th><th>among the corpus pairs above</th></tr>\n", o);
        for (int s = 0; s < h->n_static; s++) {
            int in = 0;
            for (int i = 0; i < h->n_pairs; i++) in |= h->pairs[i].f == h->st_f[s] && h->pairs[i].g == h->st_g[s];
            fputs("<tr><td>", o);
            feature_link(o, h, h->st_f[s]);
            fputs("</td><td>", o);
            feature_link(o, h, h->st_g[s]);
            fprintf(o, "</td><td>%+.4g</td><td>%s</td></tr>\n", h->st_v[s], in ? "yes" : "");
        }
        fputs("</table>\n", o);
    }
    fputs("</section>\n", o);
    return 0;
}

static const char k_css[] =
    "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}"
    "h1{font-size:22px}h2{border-bottom:1px solid #ccc;padding-bottom:4px}code{font-size:12px}"
    ".grids{display:flex;flex-wrap:wrap;gap:12px}.grid{margin:0}figcaption{font-size:13px;margin-bottom:2px}"
    "svg .ax{font-size:11px;fill:#555}svg .v{font-size:10px;fill:#111}"
    "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}"
    "th{background:#f4f4f4}td:last-child{text-align:left}"
    "mark.q{background:#ffd27f}mark.k{background:#9fd4ff}mark.qk{background:#c9b3ff}"
    ".ctx{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px}"
    ".tag{font-family:ui-monospace,monospace;color:#555}.where{color:#888;font-size:12px}"
    ".ex li{margin:3px 0}.m{color:#444}.head{margin-bottom:28px}.note{color:#666;font-size:13px}";

static int write_page(FILE *o, const ReportData *d) {
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>qkscope report</title>\n<style>", o);
    fputs(k_css, o);
    fputs("</style></head><body>\n<h1>qkscope report: which features at the query look for which features at the key</h1>\n", o);
    fputs("<p class=\"note\">run <code>", o);
    esc(o, (const uint8_t *)d->run_path, (int64_t)strlen(d->run_path));
    fprintf(o, "</code>: %lld tokens in %lld windows, model <code>", (long long)d->tokens, (long long)d->windows);
    if (d->model_dir) esc(o, (const uint8_t *)d->model_dir, (int64_t)strlen(d->model_dir));
    fprintf(o, "</code> (sha256 %.12s&hellip;), backend %s%s</p>\n", d->model_sha ? d->model_sha : "?", d->backend ? d->backend : "?",
            d->vocab.n ? "" : "; this run stored no vocabulary (set [corpus] vocab): tokens show as #id");
    fputs("<section id=\"metrics\"><h2>Fidelity per head</h2>\n<p class=\"note\">Means over every valid query "
          "(docs/ANALYSIS.md): top-1 agreement of the reconstructed pattern's argmax, KL(real || reconstructed) in nats, "
          "the share of the top key's score carried by SAE error terms, and overlap of the look-for top-k with the top "
          "key's features against a random earlier key (chance).  Second row: key position 0 (the attention sink) "
          "left out.  Hover a cell for its value.</p>\n",
          o);
    static const char *const shown[5][2] = {{"top1", "top-1"}, {"kl_both", "KL"}, {"error_share", "error share"},
                                             {"overlap", "overlap"}, {"overlap_chance", "overlap, chance"}};
    for (int sink = 0; sink < 2; sink++) {
        fprintf(o, "<h3>%s</h3><div class=\"grids\">\n", sink ? "Without the sink (key 0 left out)" : "All keys");
        for (int i = 0; i < 5; i++) {
            char name[48];
            snprintf(name, sizeof name, "%s%s", shown[i][0], sink ? "_nosink" : "");
            int m = metric_index(d, name);
            if (m >= 0) grid(o, d, m, shown[i][1]);
        }
        fputs("</div>\n", o);
    }
    fputs("</section>\n<section id=\"heads\"><h2>Recorded heads</h2>\n", o);
    if (!d->n_rec) fputs("<p>This run recorded no head ([analysis] record_heads).</p>\n", o);
    int32_t *tok = qk_malloc(sizeof(int32_t) * (d->T + 1));
    int rc = 0;
    for (int i = 0; !rc && i < d->n_rec; i++) rc = head_section(o, d, &d->rec[i], tok);
    free(tok);
    fputs("</section>\n<p class=\"note\">Written by <code>qkscope report</code>; layout of the data: docs/FORMAT.md.</p>\n"
          "</body></html>\n", o);
    return rc;
}

int cmd_report(int argc, char **argv) {
    static const struct option opts[] = {{"help", no_argument, 0, 'h'}, {"output", required_argument, 0, 'o'}, {0, 0, 0, 0}};
    const char *out = NULL, *paths[2] = {NULL, NULL};
    int n_paths = 0;
    optind = 1;
    opterr = 0;
    for (int ch; (ch = getopt_long(argc, argv, "ho:", opts, NULL)) != -1;) {
        if (ch == 'h') return usage(stdout), QK_EXIT_OK;
        if (ch == 'o') out = optarg;
        else {
            fprintf(stderr, "qkscope report: unknown or incomplete option '%s' (qkscope report --help)\n", argv[optind - 1]);
            return QK_EXIT_USAGE;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (n_paths == 2) {
            fprintf(stderr, "qkscope report: unexpected argument '%s' (RUN.h5 [STATIC.h5] -o FILE)\n", argv[i]);
            return QK_EXIT_USAGE;
        }
        paths[n_paths++] = argv[i];
    }
    if (!n_paths || !out) {
        fprintf(stderr, "qkscope report: %s is required (qkscope report RUN.h5 [STATIC.h5] -o report.html)\n",
                !n_paths ? "RUN.h5" : "-o FILE");
        return QK_EXIT_USAGE;
    }
    if (qk_out_check_file(out, 0) || qk_out_check_not_input(out, paths, n_paths)) {  // before any work
        fprintf(stderr, "qkscope report: %s\n", qk_errmsg());
        return QK_EXIT_FAIL;
    }
    ReportData d;
    if (report_load(&d, paths[0], paths[1])) {
        fprintf(stderr, "qkscope report: %s\n", qk_errmsg());
        report_free(&d);
        return QK_EXIT_FAIL;
    }
    char *tmp = qk_malloc(strlen(out) + 5);
    sprintf(tmp, "%s.tmp", out);
    FILE *o = fopen(tmp, "w");
    int rc = o ? write_page(o, &d) : qk_err("%s: cannot create", tmp);
    if (o && (ferror(o) | fclose(o)) && !rc) rc = qk_err("%s: write failed", tmp);
    if (!rc && rename(tmp, out)) rc = qk_err("%s: cannot rename to %s", tmp, out);
    if (rc) remove(tmp), fprintf(stderr, "qkscope report: %s\n", qk_errmsg());
    else printf("qkscope report: wrote %s (%d recorded heads)\n", out, d.n_rec);
    free(tmp);
    report_free(&d);
    return rc ? QK_EXIT_FAIL : QK_EXIT_OK;
}
