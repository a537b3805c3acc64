// test_run_config.c: the INI run config (host/run/run_config.c) on what the first fuzzing pass found:
// values of any length in the config hash, error lines for long paths, [sweep]s whose number of
// settings would overflow.
#include "run/run_config.h"
#include "test_common.h"

static const char *k_base = "[model]\ndir = m\n";

// Two values that differ only past 4 KB give two hashes (the hash saw 4095 bytes of a value, and
// read past its buffer).
Test(run_config, hash_covers_values_of_any_length) {
    char *v = qk_malloc(6001), *set = qk_malloc(6100), hex[2][65];
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 6000; i++) v[i] = i % 2 ? ',' : "01"[i % 4 == 0];
        v[5998] = "01"[k];
        v[6000] = 0;
        snprintf(set, 6100, "analysis.heads=%s", v);
        char *sets[1] = {set};
        RunConfig c;
        cr_assert_eq(run_config_parse(&c, "x.ini", k_base, strlen(k_base), sets, 1), 0, "%s", qk_errmsg());
        run_config_hash(&c, hex[k]);
        run_config_free(&c);
    }
    cr_expect_str_neq(hex[0], hex[1], "values differing at byte 5998 hash the same");
    free(v), free(set);
}

// A bad line in a config with a long path: the error line names path and line (it read past a
// 512-byte buffer to find the message).
Test(run_config, error_line_for_a_long_path) {
    char path[1600];
    memset(path, 'p', sizeof path - 5);
    strcpy(path + sizeof path - 5, ".ini");
    const char *text = "[model]\ndir = m\nnot a key value line\n";
    RunConfig c;
    cr_assert_eq(run_config_parse(&c, path, text, strlen(text), NULL, 0), -1);
    const char *msg = qk_errmsg();
    cr_expect(strstr(msg, "ppp.ini:3: not a 'key = value' line or a [section]"), "%s", msg);
    run_config_free(&c);
    const char *bad_key = "[model]\ndir = m\n[analysis]\nk = zero\n";
    cr_assert_eq(run_config_parse(&c, path, bad_key, strlen(bad_key), NULL, 0), -1);
    cr_expect(strstr(qk_errmsg(), "ppp.ini:4: [analysis] k = 'zero': expected an integer in [1, 1024]"), "%s", qk_errmsg());
    run_config_free(&c);
}

// 32 sweep keys of 2 values are 2^32 settings: refused at load, naming [sweep] (the count
// overflowed an int and `qkscope submit` planned a negative number of tasks).
Test(run_config, sweep_with_too_many_settings_is_refused) {
    char text[2048];
    size_t o = snprintf(text, sizeof text, "%s[sweep]\n", k_base);
    for (int i = 0; i < 32; i++) o += snprintf(text + o, sizeof text - o, "analysis.k%d = 1 | 2\n", i);
    RunConfig c;
    cr_assert_eq(run_config_parse(&c, "x.ini", text, o, NULL, 0), -1, "loaded");
    cr_expect(strstr(qk_errmsg(), "x.ini: [sweep] gives more than 4096 settings"), "%s", qk_errmsg());
    run_config_free(&c);
    o = snprintf(text, sizeof text, "%s[sweep]\nanalysis.k = 1 | 2 | 3\ncorpus.n_ctx = 8 | 16\n", k_base);
    cr_assert_eq(run_config_parse(&c, "x.ini", text, o, NULL, 0), 0, "%s", qk_errmsg());
    cr_expect_eq(run_config_n_settings(&c), 6);
    run_config_free(&c);
}

// A NUL byte would have cut the file short silently.
Test(run_config, nul_byte_is_an_error) {
    const char text[] = "[model]\ndir = m\0\n[corpus]\n";
    RunConfig c;
    cr_assert_eq(run_config_parse(&c, "x.ini", text, sizeof text - 1, NULL, 0), -1);
    cr_expect(strstr(qk_errmsg(), "x.ini: byte offset 15: a NUL byte"), "%s", qk_errmsg());
    run_config_free(&c);
}
