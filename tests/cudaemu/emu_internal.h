// emu_internal.h: what runtime.cpp and fiber.cpp of the emulated device share.
#pragma once
#include <functional>

#include "emu.h"

namespace cudaemu {
// Runs every block of a launch (fiber.cpp); false when a block faulted (already reported).
bool run_grid(const char *kernel, dim3 grid, dim3 block, size_t smem, size_t smem_limit, unsigned char poison,
              const std::function<void()> &body);
}  // namespace cudaemu
