// json_field.h: the string value of one top-level field of a JSON object, decoded with any NUL
// characters (the escape \u0000) kept.  cJSON ends its strings at the first NUL, so a JSONL
// document holding one would be cut short; the corpus reader takes such fields from here.
#pragma once
#include <stddef.h>

// text[len] must be a JSON object that cJSON parsed (the scan relies on it being valid).  1: the
// first member named `field` is a string, decoded into a fresh buffer *out (*out_len bytes, plus a
// NUL after them); 0: no such member, or not a string; -1: malformed (not expected after cJSON).
int qk_json_field_string(const char *text, size_t len, const char *field, char **out, size_t *out_len);
