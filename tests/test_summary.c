// test_summary.c: the per-head table `qkscope run` and `merge` print (agg_print_summary): a
// legend, and kl_both readable at the sizes faithful heads have (~1e-4), not 0.000.
#include "io/agg_io.h"
#include "test_common.h"

Test(summary, legend_and_small_kl) {
    HeadAggregates g;
    head_agg_init(&g, 8, 16);
    g.queries = 3;
    for (int q = 0; q < 3; q++) {  // kl_both mean 4.2e-4, top1 1
        qk_exact_add(g.sum_exact[MET_KL_BOTH], 4.2e-4f);
        g.count[MET_KL_BOTH]++;
        qk_exact_add(g.sum_exact[MET_TOP1], 1.0f);
        g.count[MET_TOP1]++;
    }
    const HeadAggregates *aggs[2] = {NULL, &g};
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    agg_print_summary(f, 1, 2, aggs);
    fclose(f);
    cr_assert(strstr(buf, "0.00042") != NULL, "kl_both not shown to 3 digits:\n%s", buf);
    cr_assert(strstr(buf, "0.000 ") == NULL || strstr(buf, "0.00042"), "%s", buf);
    cr_assert(strstr(buf, "legend") && strstr(buf, "kl_both = KL") && strstr(buf, "chance ="), "no legend:\n%s", buf);
    cr_assert(strstr(buf, "0.1") != NULL, "head 0.1 missing:\n%s", buf);
    free(buf);
    head_agg_free(&g);
}
