// unicode_classes.h: the Unicode character classes of GPT-2's pre-tokenizer regex, generated from
// the tables tiktoken's regex engine uses (tests/reference/gen_unicode_classes.py writes
// unicode_classes.c).  Each returns 1 if code point c is in the class, else 0.
#pragma once
#include <stdint.h>

int qk_uni_is_letter(uint32_t c);  // \p{L}: general category L (Lu Ll Lt Lm Lo)
int qk_uni_is_number(uint32_t c);  // \p{N}: general category N (Nd Nl No)
int qk_uni_is_space(uint32_t c);   // \s: the White_Space property
