// test_cub.cpp: the CUB shims of the emulated CUDA device (include/cub/device/*.cuh) against
// naive references written here: cub::DeviceRadixSort::SortPairs against std::stable_sort on the
// keys' masked bits (random keys with many duplicates, bit sub-ranges, 0, 1 and odd counts, the
// value types kernels/ sorts), cub::DeviceScan::InclusiveSum against a running sum (in place
// too); the size query, too little temporary storage, poisoned temporary storage, pointers that
// are not device memory, overlapping ranges, and that results appear only when the stream is
// synchronised.
#include <criterion/criterion.h>
#include <cub/cub.cuh>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "emu.h"

// ---------------------------------------------------------------------------------------------
// Device buffers

template <class T>
static T *dev_alloc(size_t n) {
    void *p = nullptr;
    cr_assert_eq(cudaMalloc(&p, n ? n * sizeof(T) : 1), cudaSuccess);
    return static_cast<T *>(p);
}

template <class T>
static T *dev_upload(const std::vector<T> &h) {
    T *d = dev_alloc<T>(h.size());
    if (!h.empty()) cr_assert_eq(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

template <class T>
static std::vector<T> dev_download(const T *d, size_t n) {
    std::vector<T> h(n);
    if (n) cr_assert_eq(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
}

static uint64_t bits_mask(int width) { return width >= 64 ? ~0ull : (1ull << width) - 1; }

// ---------------------------------------------------------------------------------------------
// The sort against its reference

// n random keys whose bits [begin, end) come from a pool of `distinct` values (many duplicates)
// and whose other bits are random: the order must ignore them and keep them.
template <class K>
static std::vector<K> random_keys(std::mt19937_64 &g, size_t n, int begin, int end, size_t distinct) {
    const uint64_t in = bits_mask(end - begin) << begin, all = bits_mask(sizeof(K) * 8);
    std::vector<uint64_t> pool(distinct);
    for (auto &p : pool) p = g();
    std::vector<K> k(n);
    for (auto &x : k) x = (K)(((pool[g() % distinct] & in) | (g() & ~in)) & all);
    return k;
}

// The stable sort of (keys, values) by bits [begin, end) of the keys.
template <class K, class V>
static void reference_sort(const std::vector<K> &k, const std::vector<V> &v, int begin, int end, std::vector<K> &ko,
                           std::vector<V> &vo) {
    const uint64_t m = bits_mask(end - begin);
    std::vector<size_t> idx(k.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(),
                     [&](size_t a, size_t b) { return ((uint64_t(k[a]) >> begin) & m) < ((uint64_t(k[b]) >> begin) & m); });
    ko.resize(k.size());
    vo.resize(k.size());
    for (size_t i = 0; i < idx.size(); i++) ko[i] = k[idx[i]], vo[i] = v[idx[i]];
}

// Sorts n pairs on `stream` through the shim and checks keys, values and untouched inputs.
template <class K, class V>
static void check_sort(std::mt19937_64 &g, size_t n, int begin, int end, size_t distinct, cudaStream_t stream = nullptr) {
    std::vector<K> k = random_keys<K>(g, n, begin, end, distinct);
    std::vector<V> v(n);
    for (size_t i = 0; i < n; i++) v[i] = (V)(i * 2654435761u + 7);  // distinct: shows where each pair went
    K *dk = dev_upload(k), *dk2 = dev_alloc<K>(n);
    V *dv = dev_upload(v), *dv2 = dev_alloc<V>(n);
    size_t bytes = 0;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, bytes, dk, dk2, dv, dv2, n, begin, end, stream), cudaSuccess);
    cr_assert_gt(bytes, 0u);
    void *tmp = dev_alloc<unsigned char>(bytes);
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, bytes, dk, dk2, dv, dv2, n, begin, end, stream), cudaSuccess,
                 "n %zu bits [%d, %d)", n, begin, end);
    cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
    std::vector<K> ko;
    std::vector<V> vo;
    reference_sort(k, v, begin, end, ko, vo);
    cr_assert(dev_download(dk2, n) == ko, "keys: n %zu, bits [%d, %d), %zu distinct", n, begin, end, distinct);
    cr_assert(dev_download(dv2, n) == vo, "values (stability): n %zu, bits [%d, %d), %zu distinct", n, begin, end, distinct);
    cr_assert(dev_download(dk, n) == k, "d_keys_in changed");
    cr_assert(dev_download(dv, n) == v, "d_values_in changed");
    cudaFree(dk), cudaFree(dk2), cudaFree(dv), cudaFree(dv2), cudaFree(tmp);
}

Test(emu_cub, sort_pairs_all_bits_equals_stable_reference) {
    std::mt19937_64 g(1);
    for (size_t n : {1, 2, 3, 7, 255, 256, 257, 1001, 4099})
        for (size_t distinct : {1, 3, 50, 100000}) check_sort<uint64_t, int32_t>(g, n, 0, 64, distinct);
}

Test(emu_cub, sort_pairs_bit_subranges_ignore_and_carry_other_bits) {
    std::mt19937_64 g(2);
    const int ranges[][2] = {{8, 40}, {0, 1}, {3, 11}, {0, 8}, {56, 64}, {63, 64}, {5, 5}, {1, 63}};
    for (const auto &r : ranges)
        for (size_t n : {1, 5, 333, 2048}) {
            check_sort<uint64_t, uint32_t>(g, n, r[0], r[1], 7);
            check_sort<uint64_t, int64_t>(g, n, r[0], r[1], 1000);
        }
}

Test(emu_cub, sort_pairs_other_key_widths_and_count_types) {
    std::mt19937_64 g(3);
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    for (size_t n : {1, 17, 999}) {
        check_sort<uint32_t, int32_t>(g, n, 0, 32, 20, s);
        check_sort<uint8_t, int64_t>(g, n, 0, 8, 5, s);
        check_sort<uint16_t, uint32_t>(g, n, 4, 13, 9, s);
    }
    // the defaults (all bits, stream 0) and an int count
    std::vector<uint32_t> k = {5, 1, 5, 0, 1};
    std::vector<int32_t> v = {0, 1, 2, 3, 4};
    uint32_t *dk = dev_upload(k), *dk2 = dev_alloc<uint32_t>(5);
    int32_t *dv = dev_upload(v), *dv2 = dev_alloc<int32_t>(5);
    size_t bytes = 0;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, bytes, dk, dk2, dv, dv2, 5), cudaSuccess);
    void *tmp = dev_alloc<unsigned char>(bytes);
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, bytes, dk, dk2, dv, dv2, 5), cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_assert(dev_download(dk2, 5) == std::vector<uint32_t>({0, 1, 1, 5, 5}));
    cr_assert(dev_download(dv2, 5) == std::vector<int32_t>({3, 1, 4, 0, 2}));
    cudaStreamDestroy(s);
}

Test(emu_cub, sort_pairs_zero_items) {
    uint64_t *dk = dev_alloc<uint64_t>(1), *dk2 = dev_alloc<uint64_t>(1);
    int32_t *dv = dev_alloc<int32_t>(1), *dv2 = dev_alloc<int32_t>(1);
    cr_assert_eq(cudaMemset(dk2, 0x11, 8), cudaSuccess);
    size_t bytes = 0;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, bytes, dk, dk2, dv, dv2, 0, 0, 64), cudaSuccess);
    cr_assert_gt(bytes, 0u);
    void *tmp = dev_alloc<unsigned char>(bytes);
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, bytes, dk, dk2, dv, dv2, 0, 0, 64), cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_assert_eq(dev_download(dk2, 1)[0], 0x1111111111111111ull, "nothing written for 0 items");
    cr_assert_eq(cudaemu::last_fault(), std::string());
}

// With d_temp_storage NULL only the size is written: nothing is checked (the counting pass of
// kernels/analysis/analysis_cuda.cu passes NULL buffers), nothing is queued.
Test(emu_cub, size_query_writes_only_the_size) {
    size_t small = 0, big = 0, scan = 0;
    uint64_t *nk = nullptr;
    uint32_t *nv = nullptr;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, small, nk, nk, nv, nv, 100, 0, 64), cudaSuccess);
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, big, nk, nk, nv, nv, 100000, 0, 64), cudaSuccess);
    cr_assert(small > 0 && big > small, "sizes %zu (100 items) %zu (100000 items)", small, big);
    int32_t *ni = nullptr;
    cr_assert_eq(cub::DeviceScan::InclusiveSum(nullptr, scan, ni, ni, 100000), cudaSuccess);
    cr_assert_gt(scan, 0u);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_assert_eq(cudaemu::last_fault(), std::string(), "a size query faulted: %s", cudaemu::last_fault().c_str());
    // negative counts are refused, bad bit ranges too
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, small, nk, nk, nv, nv, -1), cudaErrorInvalidValue);
    cr_assert_eq(cub::DeviceScan::InclusiveSum(nullptr, scan, ni, ni, -5), cudaErrorInvalidValue);
}

Test(emu_cub, too_small_temp_storage_is_refused) {
    const size_t n = 1000;
    std::mt19937_64 g(4);
    std::vector<uint64_t> k = random_keys<uint64_t>(g, n, 0, 64, 10);
    std::vector<int32_t> v(n, 3);
    uint64_t *dk = dev_upload(k), *dk2 = dev_alloc<uint64_t>(n);
    int32_t *dv = dev_upload(v), *dv2 = dev_alloc<int32_t>(n);
    cr_assert_eq(cudaMemset(dk2, 0, n * 8), cudaSuccess);
    cr_assert_eq(cudaMemset(dv2, 0, n * 4), cudaSuccess);
    size_t need = 0, scan_need = 0;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, need, dk, dk2, dv, dv2, n, 0, 64), cudaSuccess);
    cr_assert_eq(cub::DeviceScan::InclusiveSum(nullptr, scan_need, dv, dv2, n), cudaSuccess);
    void *tmp = dev_alloc<unsigned char>(need > scan_need ? need : scan_need);
    size_t bytes = need - 1;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, bytes, dk, dk2, dv, dv2, n, 0, 64), cudaErrorInvalidValue);
    cr_assert_eq(bytes, need - 1, "temp_storage_bytes is an input here");
    // a size asked for fewer items
    size_t fewer = 0;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, fewer, dk, dk2, dv, dv2, n / 2, 0, 64), cudaSuccess);
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, fewer, dk, dk2, dv, dv2, n, 0, 64), cudaErrorInvalidValue);
    bytes = scan_need - 1;
    cr_assert_eq(cub::DeviceScan::InclusiveSum(tmp, bytes, dv, dv2, n), cudaErrorInvalidValue);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_assert(dev_download(dk2, n) == std::vector<uint64_t>(n, 0), "a refused sort wrote its keys");
    cr_assert(dev_download(dv2, n) == std::vector<int32_t>(n, 0), "a refused call wrote its output");
    // exactly the size asked for is enough, from an unaligned base too (CUB's slack)
    bytes = need;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, bytes, dk, dk2, dv, dv2, n, 0, 64), cudaSuccess);
    void *odd = dev_alloc<unsigned char>(need + 8);
    bytes = need;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs((unsigned char *)odd + 8, bytes, dk, dk2, dv, dv2, n, 0, 64), cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    std::sort(k.begin(), k.end());
    cr_assert(dev_download(dk2, n) == k);
}

// The device runs the queued work when someone waits for it: right after the call the outputs
// still hold what they held (read straight from the emulated device's memory, which is the
// process's: no CUDA call that would let the device run), after cudaStreamSynchronize the result.
Test(emu_cub, results_appear_at_synchronize_not_at_the_call) {
    const size_t n = 300;
    std::mt19937_64 g(5);
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    std::vector<uint64_t> k = random_keys<uint64_t>(g, n, 0, 64, 30);
    std::vector<uint32_t> v(n);
    std::iota(v.begin(), v.end(), 0u);
    uint64_t *dk = dev_upload(k), *dk2 = dev_alloc<uint64_t>(n);
    uint32_t *dv = dev_upload(v), *dv2 = dev_alloc<uint32_t>(n);
    int32_t *dh = dev_upload(std::vector<int32_t>(n, 1)), *ds = dev_alloc<int32_t>(n);
    cr_assert_eq(cudaMemset(dk2, 0x5a, n * 8), cudaSuccess);
    cr_assert_eq(cudaMemset(ds, 0x5a, n * 4), cudaSuccess);
    size_t bytes = 0, sb = 0;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, bytes, dk, dk2, dv, dv2, n, 0, 64, s), cudaSuccess);
    cr_assert_eq(cub::DeviceScan::InclusiveSum(nullptr, sb, dh, ds, n, s), cudaSuccess);
    bytes = bytes > sb ? bytes : sb;
    unsigned char *tmp = dev_alloc<unsigned char>(bytes);
    cr_assert_eq(cudaMemset(tmp, 0, bytes), cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);  // cudaMemset is asynchronous too
    size_t b = bytes;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, b, dk, dk2, dv, dv2, n, 0, 64, s), cudaSuccess);
    b = bytes;
    cr_assert_eq(cub::DeviceScan::InclusiveSum(tmp, b, dh, ds, n, s), cudaSuccess);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(dk2[i], 0x5a5a5a5a5a5a5a5aull, "sorted key %zu present before the stream was synchronised", i);
        cr_assert_eq(ds[i], 0x5a5a5a5a, "scan output %zu present before the stream was synchronised", i);
    }
    for (size_t i = 0; i < bytes; i++) cr_assert_eq(tmp[i], 0, "temp storage touched at the call");
    cr_assert_eq(cudaStreamSynchronize(s), cudaSuccess);
    std::vector<uint64_t> ko;
    std::vector<uint32_t> vo;
    reference_sort(k, v, 0, 64, ko, vo);
    cr_assert(dev_download(dk2, n) == ko);
    cr_assert(dev_download(dv2, n) == vo);
    std::vector<int32_t> sums(n);
    std::iota(sums.begin(), sums.end(), 1);
    cr_assert(dev_download(ds, n) == sums);
    cudaStreamDestroy(s);
}

// What a caller left in d_temp_storage is gone after a call: the scan poisons the whole required
// extent with 0xA5; the sort poisons it and uses it as the other half of its ping-pong.
Test(emu_cub, temp_storage_is_poisoned_at_execution) {
    const size_t n = 1000;
    int32_t *dh = dev_upload(std::vector<int32_t>(n, 2)), *ds = dev_alloc<int32_t>(n);
    size_t need = 0;
    cr_assert_eq(cub::DeviceScan::InclusiveSum(nullptr, need, dh, ds, n), cudaSuccess);
    unsigned char *tmp = dev_alloc<unsigned char>(need + 64);
    cr_assert_eq(cudaMemset(tmp, 0, need + 64), cudaSuccess);
    size_t b = need + 64;
    cr_assert_eq(cub::DeviceScan::InclusiveSum(tmp, b, dh, ds, n), cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<unsigned char> t = dev_download(tmp, need + 64);
    for (size_t i = 0; i < need; i++) cr_assert_eq(t[i], 0xA5, "temp byte %zu of %zu not poisoned", i, need);
    for (size_t i = need; i < need + 64; i++) cr_assert_eq(t[i], 0, "byte %zu beyond the required size written", i);

    std::mt19937_64 g(6);
    std::vector<uint64_t> k = random_keys<uint64_t>(g, n, 0, 64, 1000);
    std::vector<uint32_t> v(n);
    for (auto &x : v) x = (uint32_t)g() | 0x01010101u;  // no zero byte
    uint64_t *dk = dev_upload(k), *dk2 = dev_alloc<uint64_t>(n);
    uint32_t *dv = dev_upload(v), *dv2 = dev_alloc<uint32_t>(n);
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, need, dk, dk2, dv, dv2, n, 0, 64), cudaSuccess);
    unsigned char *st = dev_alloc<unsigned char>(need);
    cr_assert_eq(cudaMemset(st, 0, need), cudaSuccess);
    b = need;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(st, b, dk, dk2, dv, dv2, n, 0, 64), cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    t = dev_download(st, need);
    // what stays zero: the high bytes of the digit counts (the first 2 KiB), a few key bytes
    const size_t zeros = (size_t)std::count(t.begin(), t.end(), 0);
    cr_assert_lt(zeros, need / 4, "%zu of %zu temp bytes still zero after the sort", zeros, need);
}

Test(emu_cub, inclusive_sum_equals_running_sum) {
    std::mt19937_64 g(7);
    for (size_t n : {0, 1, 2, 3, 127, 128, 129, 1000, 5001}) {
        std::vector<int32_t> h(n);
        for (auto &x : h) x = (int32_t)(g() % 3);  // segment heads are 0/1; a few 2s
        std::vector<int32_t> want(n);
        std::partial_sum(h.begin(), h.end(), want.begin());
        int32_t *d = dev_upload(h), *o = dev_alloc<int32_t>(n);
        size_t bytes = 0;
        cr_assert_eq(cub::DeviceScan::InclusiveSum(nullptr, bytes, d, o, n), cudaSuccess);
        void *tmp = dev_alloc<unsigned char>(bytes);
        cr_assert_eq(cub::DeviceScan::InclusiveSum(tmp, bytes, d, o, (int)n), cudaSuccess);
        cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
        cr_assert(dev_download(o, n) == want, "n %zu", n);
        cr_assert(dev_download(d, n) == h, "d_in changed, n %zu", n);
        // in place: d_in == d_out
        cr_assert_eq(cub::DeviceScan::InclusiveSum(tmp, bytes, d, d, n), cudaSuccess);
        cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
        cr_assert(dev_download(d, n) == want, "in place, n %zu", n);
        cudaFree(d), cudaFree(o), cudaFree(tmp);
    }
    // 64-bit sums, past 32 bits
    std::vector<int64_t> h(777);
    for (auto &x : h) x = (int64_t)(g() >> 20) - (int64_t)(1ll << 43);
    std::vector<int64_t> want(h.size());
    std::partial_sum(h.begin(), h.end(), want.begin());
    int64_t *d = dev_upload(h), *o = dev_alloc<int64_t>(h.size());
    size_t bytes = 0;
    cr_assert_eq(cub::DeviceScan::InclusiveSum(nullptr, bytes, d, o, h.size()), cudaSuccess);
    void *tmp = dev_alloc<unsigned char>(bytes);
    cr_assert_eq(cub::DeviceScan::InclusiveSum(tmp, bytes, d, o, h.size()), cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_assert(dev_download(o, h.size()) == want);
}

// Pointers that are not inside one allocation of the stream's device: the emulated device faults
// (cudaErrorIllegalAddress, what the GPU's kernel would hit) and the call returns it; ranges that
// overlap (CUB: not allowed) fault too.  Each fault is cleared before the next.
Test(emu_cub, illegal_addresses_and_overlaps_fault) {
    const size_t n = 64;
    uint64_t *dk = dev_alloc<uint64_t>(n), *dk2 = dev_alloc<uint64_t>(n), *short_k = dev_alloc<uint64_t>(n - 1);
    int32_t *dv = dev_alloc<int32_t>(n), *dv2 = dev_alloc<int32_t>(n);
    std::vector<uint64_t> host_k(n);
    size_t need = 0;
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(nullptr, need, dk, dk2, dv, dv2, n, 0, 64), cudaSuccess);
    unsigned char *tmp = dev_alloc<unsigned char>(need);
    auto expect_fault = [&](cudaError_t got, cudaError_t want, const char *words, const char *what) {
        cr_assert_eq(got, want, "%s: returned %d", what, (int)got);
        const std::string f = cudaemu::last_fault();
        cr_assert(f.find(words) != std::string::npos, "%s: the fault says \"%s\"", what, f.c_str());
        cudaemu::clear_fault();
    };
    size_t b = need;
    expect_fault(cub::DeviceRadixSort::SortPairs(tmp, b, host_k.data(), dk2, dv, dv2, n, 0, 64), cudaErrorIllegalAddress,
                 "d_keys_in", "host keys");
    expect_fault(cub::DeviceRadixSort::SortPairs(tmp, b, dk, short_k, dv, dv2, n, 0, 64), cudaErrorIllegalAddress,
                 "d_keys_out", "keys_out one item short");
    expect_fault(cub::DeviceRadixSort::SortPairs(tmp + 1, b, dk, dk2, dv, dv2, n, 0, 64), cudaErrorIllegalAddress,
                 "d_temp_storage", "temp storage past its allocation");
    expect_fault(cub::DeviceRadixSort::SortPairs(tmp, b, dk, dk, dv, dv2, n, 0, 64), cudaErrorInvalidValue, "overlap",
                 "keys sorted in place");
    expect_fault(cub::DeviceRadixSort::SortPairs(tmp, b, dk, dk2, dv, dv, n, 0, 64), cudaErrorInvalidValue, "overlap",
                 "values sorted in place");
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, b, dk, dk2, dv, dv2, n, 10, 65), cudaErrorInvalidValue);
    cr_assert_eq(cub::DeviceRadixSort::SortPairs(tmp, b, dk, dk2, dv, dv2, n, 9, 8), cudaErrorInvalidValue);
    size_t sb = 0;
    cr_assert_eq(cub::DeviceScan::InclusiveSum(nullptr, sb, dv, dv2, n), cudaSuccess);
    std::vector<int32_t> host_v(n);
    expect_fault(cub::DeviceScan::InclusiveSum(tmp, sb, dv, host_v.data(), n), cudaErrorIllegalAddress, "d_out",
                 "host scan output");
    expect_fault(cub::DeviceScan::InclusiveSum(tmp, sb, dv, dv + 1, n - 1), cudaErrorInvalidValue, "overlap",
                 "scan shifted by one");
    expect_fault(cub::DeviceScan::InclusiveSum(tmp, sb, (int32_t *)tmp, dv2, 8), cudaErrorInvalidValue, "overlap",
                 "scan input in its temp storage");
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
}
