// device_scan.cuh of the emulated CUDA device (tests/cudaemu/README.md): the
// cub::DeviceScan::InclusiveSum that kernels/ calls, for kernels/ compiled as C++ by the host
// compiler (make test-emu).  Written from the CUB documentation (cub::DeviceScan); not CUB's
// code.  The call checks its arguments and queues the scan on the stream (cudaemu::enqueue): it
// reads d_in and writes d_out when the emulated device reaches it, never inside the call.
#pragma once
#include <iterator>
#include <type_traits>
#include <utility>

#include "device_radix_sort.cuh"  // the checks the emulator's CUB shims share (cub::emu)

namespace cub {

struct DeviceScan {
    // Temporary storage of InclusiveSum for n items: what CUB keeps there is the status of each
    // tile of the decoupled look-back; the emulator asks for 16 bytes per 128-item tile (plus one,
    // plus ALIGN - 1 of slack), so the size grows with n as CUB's does and a size asked for fewer
    // items is refused.  The scan itself needs none: the storage is only poisoned.
    static size_t inclusive_sum_bytes(size_t n) { return emu::ALIGN - 1 + emu::round_up(16 * ((n + 127) / 128 + 1)); }

    // CUB: d_out[i] = d_in[0] + ... + d_in[i] for i < num_items.  With d_temp_storage NULL only the
    // required size is written to temp_storage_bytes and nothing else is done; otherwise
    // temp_storage_bytes is the size of d_temp_storage, less than required is
    // cudaErrorInvalidValue.  d_in == d_out scans in place; other overlaps are faults here.
    //
    // The accumulator is the type of d_in[i] + d_in[j] (CUB 2's accumulator of cuda::std::plus,
    // e.g. int for 8-bit inputs), converted to the output's type when stored.  The emulator adds
    // in index order (a running sum); CUB's tiles and warp scans group floating-point additions
    // differently, so a floating-point scan's last bits may differ from the GPU's.  Iterators that
    // are not pointers are read and written as they are, unchecked.
    template <class InputIt, class OutputIt, class NumItemsT>
    static cudaError_t InclusiveSum(void *d_temp_storage, size_t &temp_storage_bytes, InputIt d_in, OutputIt d_out,
                                    NumItemsT num_items, cudaStream_t stream = 0) {
        using InV = typename std::iterator_traits<InputIt>::value_type;
        using AccT = std::decay_t<decltype(std::declval<InV>() + std::declval<InV>())>;
        const char *fn = "cub::DeviceScan::InclusiveSum";
        size_t n = 0;
        if (!emu::count_of(num_items, &n)) return cudaErrorInvalidValue;
        const size_t need = inclusive_sum_bytes(n);
        if (!d_temp_storage) {
            temp_storage_bytes = need;
            return cudaSuccess;
        }
        if (temp_storage_bytes < need) return cudaErrorInvalidValue;
        const int dev = cudaemu::stream_device(stream);
        emu::Range r[3] = {{"d_temp_storage", d_temp_storage, need}, {"d_in", nullptr, 0}, {"d_out", nullptr, 0}};
        if constexpr (std::is_pointer<InputIt>::value) r[1] = {"d_in", static_cast<const void *>(d_in), n * sizeof(*d_in)};
        if constexpr (std::is_pointer<OutputIt>::value) r[2] = {"d_out", static_cast<const void *>(d_out), n * sizeof(*d_out)};
        for (const emu::Range &x : r)
            if (cudaError_t e = emu::check_range(fn, x.what, x.p, x.bytes, dev)) return e;
        // in place is d_in == d_out exactly (both pointers, same extent); any other overlap is not
        const bool in_place = r[1].bytes && r[1].p == r[2].p && r[1].bytes == r[2].bytes;
        if (cudaError_t e = emu::check_disjoint(fn, r, in_place ? 2 : 3)) return e;
        return cudaemu::enqueue(stream, fn, [=]() mutable {
            memset(d_temp_storage, emu::POISON, need);
            if (n == 0) return;
            AccT acc = d_in[0];  // d_in[i] is read before d_out[i] is written: in place is fine
            d_out[0] = acc;
            for (size_t i = 1; i < n; i++) {
                acc = acc + d_in[i];
                d_out[i] = acc;
            }
        });
    }
};

}  // namespace cub
