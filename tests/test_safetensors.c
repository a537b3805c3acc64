// test_safetensors.c: the reader enforces every rule of SPEC §6; malformed files give one clear
// error naming the file and the field, and never crash.
#include "test_common.h"

static char *g_dir;
static void setup(void) { g_dir = make_tmpdir(); }
static void teardown(void) { rm_rf(g_dir); free(g_dir); }
TestSuite(safetensors, .init = setup, .fini = teardown);

// Writes u64 header length, the header text, then data_len bytes of data; returns the path.
static char *st_file(const char *name, const char *header, size_t data_len) {
    char *path = qk_path_join(g_dir, name);
    size_t hl = strlen(header), n = 8 + hl + data_len;
    unsigned char *buf = qk_calloc(n, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) buf[8 + hl + i] = (unsigned char)i;
    write_bytes(path, buf, n);
    free(buf);
    return path;
}

// Opening must fail, and the one-line message must name the file and contain `what`.
static void expect_error(const char *path, const char *what) {
    QkSafetensors st;
    cr_assert_eq(qk_st_open(&st, path), -1, "%s opened but should not have", path);
    const char *msg = qk_errmsg();
    cr_expect(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
    cr_expect(strstr(msg, what) != NULL, "message lacks '%s': %s", what, msg);
    cr_expect(strchr(msg, '\n') == NULL, "message is not one line");
}

#define T1 "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

Test(safetensors, valid_file_with_padding_metadata_and_empty_tensor) {
    char *p = st_file("ok.st",
                      "{\"__metadata__\":{\"format\":\"pt\"}," T1 ",\"z\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[8,8]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[8,12]}}   ",
                      12);
    QkSafetensors st;
    cr_assert_eq(qk_st_open(&st, p), 0, "%s", qk_errmsg());
    cr_expect_eq(st.n_tensors, 3);
    cr_expect_str_eq(qk_st_meta(&st, "format"), "pt");
    const QkTensorInfo *b = qk_st_find(&st, "b");
    cr_assert_not_null(b);
    cr_expect_eq(b->dtype, QK_DT_BF16);
    cr_expect_eq(b->numel, 2);
    cr_expect_null(qk_st_find(&st, "nope"));
    int64_t shape[] = {3};
    cr_expect_null(qk_st_load_f32(&st, "a", 1, shape));
    cr_expect(strstr(qk_errmsg(), "'a' has shape [2], expected [3]") != NULL, "%s", qk_errmsg());
    cr_expect_null(qk_st_load_f32(&st, "missing", 1, shape));
    cr_expect(strstr(qk_errmsg(), "'missing' is missing") != NULL, "%s", qk_errmsg());
    qk_st_close(&st);
    free(p);
}

Test(safetensors, f16_bf16_conversion) {
    // f16: 1.0, -2.5, smallest subnormal 2^-24, +inf, 65504 (max)
    uint16_t h[] = {0x3C00, 0xC100, 0x0001, 0x7C00, 0x7BFF};
    float want[] = {1.0f, -2.5f, 5.9604645e-08f, INFINITY, 65504.0f};
    for (int i = 0; i < 5; i++) cr_expect_eq(qk_f16_to_f32(h[i]), want[i], "f16 0x%04x", h[i]);
    cr_expect(isnan(qk_f16_to_f32(0x7E00)));
    cr_expect_eq(qk_bf16_to_f32(0x3F80), 1.0f);
    cr_expect_eq(qk_bf16_to_f32(0xC020), -2.5f);
}

Test(safetensors, file_shorter_than_8_bytes) {
    char *p = qk_path_join(g_dir, "short.st");
    write_bytes(p, "\x02\x00\x00", 3);
    expect_error(p, "too short");
    free(p);
}

Test(safetensors, header_length_over_limit) {
    char *p = qk_path_join(g_dir, "huge.st");
    unsigned char b[16] = {0x00, 0xe2, 0xf5, 0x05, 0, 0, 0, 0, '{', '}'};  // 100,000,256 > 1e8
    write_bytes(p, b, sizeof b);
    expect_error(p, "exceeds the limit");
    free(p);
}

Test(safetensors, header_runs_past_end_of_file) {
    char *p = qk_path_join(g_dir, "trunchdr.st");
    unsigned char b[12] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '"', 'a', '"'};
    write_bytes(p, b, sizeof b);
    expect_error(p, "runs past the end");
    free(p);
}

Test(safetensors, header_not_json) {
    char *p = st_file("notjson.st", "{\"a\": [1, 2", 0);
    expect_error(p, "not a JSON object");
    free(p);
}

Test(safetensors, header_not_an_object) {
    char *p = st_file("array.st", "[1, 2]", 0);
    expect_error(p, "does not start with '{'");
    free(p);
}

Test(safetensors, header_invalid_utf8) {
    char *p = st_file("utf8.st", "{\"\xff\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0);
    expect_error(p, "UTF-8");
    free(p);
}

Test(safetensors, garbage_after_json) {
    char *p = st_file("garbage.st", "{" T1 "}  x", 8);
    expect_error(p, "after the JSON object");
    free(p);
}

Test(safetensors, overlapping_offsets) {
    char *p = st_file("overlap.st", "{" T1 ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
    expect_error(p, "overlaps");
    free(p);
}

Test(safetensors, gap_between_tensors) {
    char *p = st_file("gap.st", "{" T1 ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16);
    expect_error(p, "gap in data");
    free(p);
}

Test(safetensors, data_not_starting_at_zero) {
    char *p = st_file("gap0.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
    expect_error(p, "gap in data");
    free(p);
}

Test(safetensors, shape_size_mismatch) {
    char *p = st_file("mismatch.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
    expect_error(p, "tensor 'a': data_offsets span 8 bytes but shape and dtype F32 need 12");
    free(p);
}

Test(safetensors, overflowing_shape) {
    char *p = st_file("overflow.st",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8);
    expect_error(p, "overflow");
    free(p);
}

Test(safetensors, negative_or_fractional_shape) {
    char *p = st_file("neg.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
    expect_error(p, "shape[0] is not a non-negative integer");
    char *q = st_file("frac.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8);
    expect_error(q, "shape[0]");
    free(p);
    free(q);
}

Test(safetensors, unknown_dtype) {
    char *p = st_file("dtype.st", "{\"a\":{\"dtype\":\"F31\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_error(p, "unknown dtype 'F31'");
    free(p);
}

Test(safetensors, duplicate_name) {
    char *p = st_file("dup.st", "{" T1 ",\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16);
    expect_error(p, "duplicate tensor name 'a'");
    free(p);
}

Test(safetensors, trailing_bytes) {
    char *p = st_file("trailing.st", "{" T1 "}", 12);
    expect_error(p, "trailing bytes");
    free(p);
}

Test(safetensors, truncated_data) {
    char *p = st_file("truncdata.st", "{" T1 "}", 5);
    expect_error(p, "truncated");
    free(p);
}

Test(safetensors, end_before_begin_and_bad_offsets) {
    char *p = st_file("endbegin.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 0);
    expect_error(p, "end 0 < begin 8");
    char *q = st_file("offs.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8);
    expect_error(q, "data_offsets");
    free(p);
    free(q);
}

Test(safetensors, missing_fields_and_bad_metadata) {
    char *p = st_file("nodtype.st", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_error(p, "'dtype' missing");
    char *q = st_file("meta.st", "{\"__metadata__\":{\"k\":3}," T1 "}", 8);
    expect_error(q, "__metadata__ 'k' is not a string");
    char *r = st_file("notobj.st", "{\"a\":7}", 0);
    expect_error(r, "tensor 'a' is not a JSON object");
    free(p);
    free(q);
    free(r);
}

Test(safetensors, non_float_tensor_not_converted) {
    char *p = st_file("int.st", "{\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    QkSafetensors st;
    cr_assert_eq(qk_st_open(&st, p), 0, "%s", qk_errmsg());
    int64_t shape[] = {2};
    cr_expect_null(qk_st_load_f32(&st, "a", 1, shape));
    cr_expect(strstr(qk_errmsg(), "dtype I32") != NULL, "%s", qk_errmsg());
    qk_st_close(&st);
    free(p);
}

// The number of header entries is capped before the table of them is allocated (a 100 MB header
// of empty entries asked for ~2 GB), and the in-memory reader applies every rule of the file one.
Test(safetensors, entry_count_capped_and_in_memory_reader_agrees) {
    size_t n = (size_t)QK_ST_MAX_TENSORS + 1, cap = 16 * n + 16, o = 0;
    char *hdr = qk_malloc(cap);
    hdr[o++] = '{';
    for (size_t i = 0; i < n; i++) o += snprintf(hdr + o, cap - o, "%s\"%zx\":0", i ? "," : "", i);
    hdr[o++] = '}', hdr[o] = 0;
    char *p = st_file("many.st", hdr, 0);
    expect_error(p, "entries (at most 1048576)");
    free(hdr), free(p);
    p = st_file("ok.st", "{" T1 "}", 8);
    size_t len;
    char *bytes = qk_read_file(p, &len);
    QkSafetensors st;
    cr_assert_eq(qk_st_open_mem(&st, bytes, len, "mem.st"), 0, "%s", qk_errmsg());
    cr_expect(st.n_tensors == 1 && qk_st_find(&st, "a") && qk_st_find(&st, "a")->numel == 2);
    qk_st_close(&st);
    cr_assert_eq(qk_st_open_mem(&st, bytes, len - 1, "mem.st"), -1);
    cr_expect(strstr(qk_errmsg(), "mem.st: safetensors: data section is 7 bytes but the tensors cover 8"), "%s", qk_errmsg());
    free(bytes), free(p);
}
