// token_file.h: token windows from a file: text (whitespace-separated ids, one sequence per line,
// every line the same length) or .npy ([batch, pos] or [pos], any integer dtype).
#pragma once

#include <stddef.h>

// On success *tokens (B, T) is a fresh int array (free with free()); on failure *tokens is NULL
// and qk_errmsg() names the file and the field, line or byte offset.
int qk_token_file_read(const char *path, int **tokens, int *B, int *T);
// The same on the file's bytes already in memory (the format chosen by `path`'s suffix).
int qk_token_file_parse(const char *path, const void *data, size_t len, int **tokens, int *B, int *T);
