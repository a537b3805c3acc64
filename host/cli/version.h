// version.h: `qkscope --version`: the version, the git commit it was built from, the build flags,
// and whether CUDA and NCCL are compiled in (the build writes $(BUILD)/version_info.h).
#pragma once
#include <stdio.h>

void qk_print_version(FILE *f);
