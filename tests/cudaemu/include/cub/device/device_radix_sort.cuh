// device_radix_sort.cuh of the emulated CUDA device (tests/cudaemu/README.md): the
// cub::DeviceRadixSort::SortPairs that kernels/ calls, for kernels/ compiled as C++ by the host
// compiler (make test-emu).  Written from the CUB documentation (cub::DeviceRadixSort); not CUB's
// code.  The call checks its arguments, as CUB's dispatch does, and queues the sort on the stream
// (cudaemu::enqueue): the sort runs when the emulated device reaches it, reads the inputs then and
// writes the outputs then, never inside the call.
//
// Also the checks the emulator's CUB shims share (cub::emu), which device_scan.cuh uses.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "../../../emu.h"  // tests/cudaemu/emu.h, found without -Itests/cudaemu

namespace cub {

// The emulator's own helpers (not a CUB API).
namespace emu {

// CUB carves its temporaries out of d_temp_storage at 256-byte boundaries and asks for 255 bytes
// of slack so that any base pointer can be aligned up; the emulator does the same, so a caller
// that passes an offset pointer, or fewer bytes than it was told, meets the same outcome as on
// the GPU.
constexpr size_t ALIGN = 256;
inline size_t round_up(size_t bytes) { return (bytes + ALIGN - 1) / ALIGN * ALIGN; }
inline unsigned char *align_up(void *p) {
    uintptr_t u = reinterpret_cast<uintptr_t>(p);
    return reinterpret_cast<unsigned char *>((u + ALIGN - 1) / ALIGN * ALIGN);
}

// What CUB's device code would find at p: [p, p + bytes) must lie in one live allocation of the
// stream's device (no peer access exists on the emulated device).  Otherwise the emulated device
// faults (cudaErrorIllegalAddress: what the GPU's sort kernel would hit) and the call returns it.
// Empty ranges (num_items 0) are never touched, so any pointer goes.
inline cudaError_t check_range(const char *fn, const char *what, const void *p, size_t bytes, int device) {
    if (bytes == 0) return cudaSuccess;
    int d = -1;
    if (!cudaemu::device_range(p, bytes, &d)) {
        cudaemu::fault(cudaErrorIllegalAddress, "%s: %s [%p, +%zu bytes) is not inside one device allocation", fn,
                       what, p, bytes);
        return cudaErrorIllegalAddress;
    }
    if (d != device) {
        cudaemu::fault(cudaErrorIllegalAddress, "%s: %s %p is memory of device %d, the stream is on device %d", fn, what,
                       p, d, device);
        return cudaErrorIllegalAddress;
    }
    return cudaSuccess;
}

// One of the byte ranges a call reads or writes, for the no-overlap rules of CUB's documentation.
struct Range {
    const char *what;
    const void *p;
    size_t bytes;
};
inline bool overlap(const Range &a, const Range &b) {
    if (!a.bytes || !b.bytes) return false;
    uintptr_t x = reinterpret_cast<uintptr_t>(a.p), y = reinterpret_cast<uintptr_t>(b.p);
    return x < y + b.bytes && y < x + a.bytes;
}
// The first overlapping pair among r[0..n), reported as a fault (cudaErrorInvalidValue: the GPU
// would not notice, it would produce garbage) and returned; cudaSuccess when none overlap.
inline cudaError_t check_disjoint(const char *fn, const Range *r, int n) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (overlap(r[i], r[j])) {
                cudaemu::fault(cudaErrorInvalidValue, "%s: %s [%p, +%zu) overlaps %s [%p, +%zu) (CUB: the ranges shall not overlap)",
                               fn, r[i].what, r[i].p, r[i].bytes, r[j].what, r[j].p, r[j].bytes);
                return cudaErrorInvalidValue;
            }
    return cudaSuccess;
}

// num_items as a count: negative is an invalid value (CUB's counts are never negative).
template <class N>
inline bool count_of(N num_items, size_t *n) {
    static_assert(std::is_integral<N>::value, "cub: num_items is an integer");
    if constexpr (std::is_signed<N>::value)
        if (num_items < 0) return false;
    *n = static_cast<size_t>(num_items);
    return true;
}

// The pattern the shims write over the temporary storage they were given (then use as scratch):
// a caller that reads its own data back from d_temp_storage after a call finds this instead.
constexpr int POISON = 0xA5;

}  // namespace emu

struct DeviceRadixSort {
    // Temporary storage of SortPairs for n items of (K, V), in the order carved:
    //   [0, 256 * 8)  the digit histogram, then its exclusive prefix (size_t[256])
    //   keys          (n) K, the other half of the keys' ping-pong
    //   values        (n) V, the other half of the values' ping-pong
    // plus ALIGN - 1 bytes of slack; grows with n, so a size asked for fewer items is refused.
    template <class K, class V>
    static size_t sort_pairs_bytes(size_t n) {
        return emu::ALIGN - 1 + emu::round_up(256 * sizeof(size_t)) + emu::round_up(n * sizeof(K)) +
               emu::round_up(n * sizeof(V));
    }

    // CUB: sorts n key-value pairs into ascending order of the keys' bits [begin_bit, end_bit),
    // stably (equal keys keep their input order); bits outside the range do not affect the order
    // but are carried with the key.  With d_temp_storage NULL only the required size is written to
    // temp_storage_bytes and nothing else is done; otherwise temp_storage_bytes is the size of
    // d_temp_storage, and less than required is cudaErrorInvalidValue.  The inputs are not
    // changed; none of the four ranges may overlap (CUB does not sort in place).
    //
    // The emulation: an LSD radix sort of 8-bit digits, each pass a stable counting sort that
    // ping-pongs between the outputs and d_temp_storage (poisoned first), arranged so that the
    // last pass lands in the outputs.  Keys: unsigned integers (CUB's bit twiddling of signed and
    // floating-point keys is not emulated).
    template <class KeyT, class ValueT, class NumItemsT>
    static cudaError_t SortPairs(void *d_temp_storage, size_t &temp_storage_bytes, const KeyT *d_keys_in,
                                 KeyT *d_keys_out, const ValueT *d_values_in, ValueT *d_values_out,
                                 NumItemsT num_items, int begin_bit = 0, int end_bit = sizeof(KeyT) * 8,
                                 cudaStream_t stream = 0) {
        static_assert(std::is_integral<KeyT>::value && std::is_unsigned<KeyT>::value && sizeof(KeyT) <= 8,
                      "cudaemu: DeviceRadixSort keys are unsigned integers of at most 64 bits here");
        static_assert(std::is_trivially_copyable<ValueT>::value, "cub: values are copied bitwise");
        const char *fn = "cub::DeviceRadixSort::SortPairs";
        size_t n = 0;
        if (!emu::count_of(num_items, &n)) return cudaErrorInvalidValue;
        const size_t need = sort_pairs_bytes<KeyT, ValueT>(n);
        if (!d_temp_storage) {
            temp_storage_bytes = need;
            return cudaSuccess;
        }
        const int bits = (int)sizeof(KeyT) * 8;
        if (begin_bit < 0 || end_bit < begin_bit || end_bit > bits) return cudaErrorInvalidValue;
        if (temp_storage_bytes < need) return cudaErrorInvalidValue;
        const int dev = cudaemu::stream_device(stream);
        const size_t kb = n * sizeof(KeyT), vb = n * sizeof(ValueT);
        const emu::Range r[5] = {{"d_temp_storage", d_temp_storage, need},
                                 {"d_keys_in", d_keys_in, kb},
                                 {"d_keys_out", d_keys_out, kb},
                                 {"d_values_in", d_values_in, vb},
                                 {"d_values_out", d_values_out, vb}};
        for (const emu::Range &x : r)
            if (cudaError_t e = emu::check_range(fn, x.what, x.p, x.bytes, dev)) return e;
        if (cudaError_t e = emu::check_disjoint(fn, r, 5)) return e;
        return cudaemu::enqueue(stream, fn, [=] {
            memset(d_temp_storage, emu::POISON, need);
            unsigned char *base = emu::align_up(d_temp_storage);
            size_t *count = reinterpret_cast<size_t *>(base);
            KeyT *k_alt = reinterpret_cast<KeyT *>(base + emu::round_up(256 * sizeof(size_t)));
            ValueT *v_alt = reinterpret_cast<ValueT *>(reinterpret_cast<unsigned char *>(k_alt) + emu::round_up(kb));
            const int passes = (end_bit - begin_bit + 7) / 8;
            if (passes == 0) {  // no differentiating bits: every key equal, the input order stays
                if (n) {
                    memcpy(d_keys_out, d_keys_in, kb);
                    memcpy(d_values_out, d_values_in, vb);
                }
                return;
            }
            const KeyT *ks = d_keys_in;
            const ValueT *vs = d_values_in;
            for (int p = 0; p < passes; p++) {
                const bool last_lands_out = (passes - 1 - p) % 2 == 0;
                KeyT *kd = last_lands_out ? d_keys_out : k_alt;
                ValueT *vd = last_lands_out ? d_values_out : v_alt;
                const int shift = begin_bit + 8 * p, width = end_bit - shift < 8 ? end_bit - shift : 8;
                const uint64_t mask = (uint64_t(1) << width) - 1;
                auto digit = [&](KeyT k) { return (size_t)((uint64_t(k) >> shift) & mask); };
                for (int d = 0; d < 256; d++) count[d] = 0;
                for (size_t i = 0; i < n; i++) count[digit(ks[i])]++;
                for (size_t d = 0, at = 0; d < 256; d++) {  // counts -> first slot of each digit
                    const size_t c = count[d];
                    count[d] = at;
                    at += c;
                }
                for (size_t i = 0; i < n; i++) {  // in input order: stable
                    const size_t j = count[digit(ks[i])]++;
                    kd[j] = ks[i];
                    vd[j] = vs[i];
                }
                ks = kd;
                vs = vd;
            }
        });
    }
};

}  // namespace cub
