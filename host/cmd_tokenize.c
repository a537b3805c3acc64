// cmd_tokenize.c: placeholder until the command lands.
#include <stdio.h>
#include "commands.h"
int cmd_tokenize(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "qkscope tokenize: not built yet\n");
    return QK_EXIT_FAIL;
}
