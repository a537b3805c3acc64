// cub.cuh of the emulated CUDA device (tests/cudaemu/README.md): the umbrella header of the CUB
// shims, for kernels/ compiled as C++ by the host compiler (make test-emu).  Only the algorithms
// kernels/ calls are emulated: cub::DeviceRadixSort::SortPairs and cub::DeviceScan::InclusiveSum.
#pragma once
#include "device/device_radix_sort.cuh"
#include "device/device_scan.cuh"
