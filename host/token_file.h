// token_file.h: token windows from a file: text (whitespace-separated ids, one sequence per line,
// every line the same length) or .npy ([batch, pos] or [pos], any integer dtype).
#pragma once

// On success *tokens (B, T) is a fresh int array (free with free()).
int qk_token_file_read(const char *path, int **tokens, int *B, int *T);
