// cmd_cache.c: placeholder until the command lands.
#include <stdio.h>
#include "commands.h"
int cmd_cache(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "qkscope cache: not built yet\n");
    return QK_EXIT_FAIL;
}
