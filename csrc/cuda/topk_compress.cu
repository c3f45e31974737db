// CUDA TopK EF21 compression: exact radix select, then an order-preserving compaction.
//
//   init    control block {prefix, mask, ties_needed, done} and a zeroed 2048-bin histogram
//   per level (11/11/10-bit digits of the magnitude key, most significant first):
//     hist    grid-stride pass: shared-memory histogram of the digit among keys matching the
//             prefix so far, flushed into the global histogram
//     choose  one warp: the bin holding the k-th largest key; updates the control block and
//             stops the remaining levels when the whole bin is kept
//   count   per 4096-element tile: how many keys are above the threshold / tie with it
//   scan    one block: per tile, how many ties it keeps (lowest indices first) and where its
//           output starts (exclusive prefix sums)
//   emit    per tile, in rounds of 256: ballot ranks give each winner its slot, so indices
//           ascend; writes values / indices and adds values into state
// Every decision is made on the device: no host synchronisation.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/topk_compress.h"
#include "osmos/topk.h"

namespace osmos::cuda {
namespace {

using topk::magnitude_key;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kTile = int64_t(kThreads) * 16;
constexpr int kScanThreads = 1024;
constexpr unsigned kFull = 0xffffffffu;

struct Control {
  uint32_t prefix;           // winners have (key & mask) > prefix, or == prefix within the quota
  uint32_t mask;
  long long ties_needed;     // how many keys equal to the prefix are kept
  int done;                  // no further radix level needed
};

struct Layout {
  size_t control, hist, above, ties, quota, offset, total;
};

size_t align_up(size_t v) { return (v + 255) & ~size_t(255); }

int64_t tiles_for(int64_t n) { return (n + kTile - 1) / kTile; }

Layout layout(int64_t n) {
  const size_t tiles = size_t(tiles_for(n));
  Layout l;
  l.control = 0;
  l.hist = align_up(l.control + sizeof(Control));
  l.above = align_up(l.hist + sizeof(uint32_t) * topk::kRadixBins);
  l.ties = align_up(l.above + sizeof(uint32_t) * tiles);
  l.quota = align_up(l.ties + sizeof(uint32_t) * tiles);
  l.offset = align_up(l.quota + sizeof(uint32_t) * tiles);
  l.total = align_up(l.offset + sizeof(long long) * tiles);
  return l;
}

template <class X, class S>
__device__ __forceinline__ float diff_at(const typename X::storage* x, const typename S::storage* s, int64_t i) {
  return topk::diff<X, S>(x[i], s[i]);
}

__global__ void init_kernel(Control* ctl, uint32_t* hist, long long k, int take_all) {
  for (int b = threadIdx.x; b < topk::kRadixBins; b += blockDim.x) hist[b] = 0;
  if (threadIdx.x == 0) {
    ctl->prefix = 0;
    ctl->mask = 0;
    ctl->ties_needed = k;
    ctl->done = take_all;
  }
}

template <class X, class S>
__global__ void __launch_bounds__(kThreads) hist_kernel(const typename X::storage* x, const typename S::storage* s,
                                                        int64_t n, const Control* ctl, uint32_t* hist, int level) {
  if (ctl->done) return;
  __shared__ uint32_t h[topk::kRadixBins];
  for (int b = threadIdx.x; b < topk::kRadixBins; b += blockDim.x) h[b] = 0;
  __syncthreads();
  const uint32_t prefix = ctl->prefix, mask = ctl->mask;
  const int shift = topk::level_shift(level);
  const uint32_t digit = topk::level_digit_mask(level);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t key = magnitude_key(diff_at<X, S>(x, s, i));
    if ((key & mask) == prefix) atomicAdd(&h[(key >> shift) & digit], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < topk::kRadixBins; b += blockDim.x)
    if (h[b]) atomicAdd(&hist[b], h[b]);
}

// One warp. Lane 0 owns the highest bins; a warp scan finds the lane whose bins hold the
// ties_needed-th key from the top, and that lane walks its bins.
__global__ void choose_kernel(Control* ctl, uint32_t* hist, int level) {
  if (ctl->done) return;
  const int lane = threadIdx.x;
  const uint32_t digit = topk::level_digit_mask(level);
  const int per_lane = (int(digit) + 1) / 32;
  const int hi = int(digit) + 1 - per_lane * lane;  // this lane's bins: [hi - per_lane, hi)
  long long sum = 0;
  for (int b = hi - per_lane; b < hi; ++b) sum += hist[b];
  long long incl = sum;
  for (int off = 1; off < 32; off <<= 1) {
    const long long o = __shfl_up_sync(kFull, incl, off);
    if (lane >= off) incl += o;
  }
  const long long excl = incl - sum;
  const long long need = ctl->ties_needed;
  const unsigned owner = __ballot_sync(kFull, excl < need && need <= incl);
  if (owner != 0 && lane == __ffs(owner) - 1) {
    long long higher = excl, in_bin = 0;
    int bin = hi - 1;
    for (; bin > hi - per_lane; --bin) {
      in_bin = hist[bin];
      if (higher + in_bin >= need) break;
      higher += in_bin;
    }
    in_bin = hist[bin];
    const int shift = topk::level_shift(level);
    ctl->ties_needed = need - higher;
    ctl->prefix |= uint32_t(bin) << shift;
    ctl->mask |= digit << shift;
    if (in_bin == need - higher || level == topk::kLevels - 1) ctl->done = 1;
  }
  __syncwarp();
  for (int b = lane; b < topk::kRadixBins; b += 32) hist[b] = 0;  // ready for the next level
}

template <class X, class S>
__global__ void __launch_bounds__(kThreads) count_kernel(const typename X::storage* x, const typename S::storage* s,
                                                         int64_t n, const Control* ctl, uint32_t* above, uint32_t* ties) {
  __shared__ uint32_t warp_above[kWarps], warp_ties[kWarps];
  const int64_t begin = int64_t(blockIdx.x) * kTile;
  const int64_t end = begin + kTile < n ? begin + kTile : n;
  const uint32_t prefix = ctl->prefix, mask = ctl->mask;
  uint32_t a = 0, t = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const uint32_t m = magnitude_key(diff_at<X, S>(x, s, i)) & mask;
    a += m > prefix;
    t += m == prefix;
  }
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(kFull, a, off);
    t += __shfl_down_sync(kFull, t, off);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { warp_above[warp] = a; warp_ties[warp] = t; }
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t sa = 0, st = 0;
    for (int w = 0; w < kWarps; ++w) { sa += warp_above[w]; st += warp_ties[w]; }
    above[blockIdx.x] = sa;
    ties[blockIdx.x] = st;
  }
}

// Exclusive prefix sum of v over the block (blockDim.x a multiple of 32, at most 1024);
// *total gets the block's sum. Every thread of the block must call it.
__device__ long long block_exclusive_scan(long long v, long long* total) {
  __shared__ long long warp_sums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  long long incl = v;
  for (int off = 1; off < 32; off <<= 1) {
    const long long o = __shfl_up_sync(kFull, incl, off);
    if (lane >= off) incl += o;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  long long before = 0, sum = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) before += warp_sums[w];
    sum += warp_sums[w];
  }
  __syncthreads();  // warp_sums may be rewritten by the next call
  *total = sum;
  return before + incl - v;
}

__global__ void __launch_bounds__(kScanThreads) scan_kernel(const Control* ctl, const uint32_t* above,
                                                            const uint32_t* ties, uint32_t* quota,
                                                            long long* offset, int64_t tiles) {
  const long long need = ctl->ties_needed;
  long long ties_before = 0, out_before = 0;
  for (int64_t base = 0; base < tiles; base += blockDim.x) {
    const int64_t b = base + threadIdx.x;
    const bool valid = b < tiles;
    const long long t = valid ? ties[b] : 0;
    long long t_total, o_total;
    const long long t_excl = ties_before + block_exclusive_scan(t, &t_total);
    long long q = need - t_excl;
    q = q < 0 ? 0 : (q > t ? t : q);
    const long long o = valid ? above[b] + q : 0;
    const long long o_excl = out_before + block_exclusive_scan(o, &o_total);
    if (valid) {
      quota[b] = uint32_t(q);
      offset[b] = o_excl;
    }
    ties_before += t_total;
    out_before += o_total;
  }
}

template <class X, class S>
__global__ void __launch_bounds__(kThreads) emit_kernel(const typename X::storage* x, typename S::storage* s,
                                                        int64_t n, const Control* ctl, const uint32_t* quota,
                                                        const long long* offset, typename S::storage* values,
                                                        int64_t* indices) {
  __shared__ uint32_t warp_ties[kWarps], warp_taken[kWarps];
  const int64_t begin = int64_t(blockIdx.x) * kTile;
  const int64_t end = begin + kTile < n ? begin + kTile : n;
  const uint32_t prefix = ctl->prefix, mask = ctl->mask;
  const uint32_t tie_quota = quota[blockIdx.x];
  long long out = offset[blockIdx.x];
  uint32_t ties_seen = 0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  for (int64_t base = begin; base < end; base += kThreads) {  // uniform across the block
    const int64_t i = base + threadIdx.x;
    float d = 0.0f;
    bool is_above = false, is_tie = false;
    if (i < end) {
      d = diff_at<X, S>(x, s, i);
      const uint32_t m = magnitude_key(d) & mask;
      is_above = m > prefix;
      is_tie = m == prefix;
    }
    const unsigned tie_bits = __ballot_sync(kFull, is_tie);
    if (lane == 0) warp_ties[warp] = __popc(tie_bits);
    __syncthreads();
    uint32_t tie_rank = __popc(tie_bits & lanes_below), tie_total = 0;
    for (int w = 0; w < kWarps; ++w) {
      const uint32_t c = warp_ties[w];
      if (w < warp) tie_rank += c;
      tie_total += c;
    }
    const bool take = is_above || (is_tie && ties_seen + tie_rank < tie_quota);
    const unsigned take_bits = __ballot_sync(kFull, take);
    if (lane == 0) warp_taken[warp] = __popc(take_bits);
    __syncthreads();
    uint32_t rank = __popc(take_bits & lanes_below), taken_total = 0;
    for (int w = 0; w < kWarps; ++w) {
      const uint32_t c = warp_taken[w];
      if (w < warp) rank += c;
      taken_total += c;
    }
    if (take) {
      const long long position = out + rank;
      values[position] = S::from_float(d);
      indices[position] = i;
      s[i] = S::from_float(S::to_float(s[i]) + d);
    }
    out += taken_total;
    ties_seen += tie_total;
    __syncthreads();  // warp_taken is rewritten next round
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("osmos topk_compress: ") + what + ": " + cudaGetErrorString(err));
}

template <class X, class S>
void run(const void* xv, void* sv, int64_t n, int64_t k, void* values, int64_t* indices, char* ws,
         cudaStream_t stream) {
  using XS = typename X::storage;
  using SS = typename S::storage;
  const XS* x = static_cast<const XS*>(xv);
  SS* s = static_cast<SS*>(sv);
  const Layout l = layout(n);
  auto* ctl = reinterpret_cast<Control*>(ws + l.control);
  auto* hist = reinterpret_cast<uint32_t*>(ws + l.hist);
  auto* above = reinterpret_cast<uint32_t*>(ws + l.above);
  auto* ties = reinterpret_cast<uint32_t*>(ws + l.ties);
  auto* quota = reinterpret_cast<uint32_t*>(ws + l.quota);
  auto* offset = reinterpret_cast<long long*>(ws + l.offset);
  const int64_t tiles = tiles_for(n);

  init_kernel<<<1, 1024, 0, stream>>>(ctl, hist, k, k == n);
  if (k < n) {
    const int64_t wanted = (n + kThreads * 8 - 1) / (kThreads * 8);
    const int grid = int(wanted < 1024 ? wanted : 1024);
    for (int level = 0; level < topk::kLevels; ++level) {
      hist_kernel<X, S><<<grid, kThreads, 0, stream>>>(x, s, n, ctl, hist, level);
      choose_kernel<<<1, 32, 0, stream>>>(ctl, hist, level);
    }
  }
  count_kernel<X, S><<<unsigned(tiles), kThreads, 0, stream>>>(x, s, n, ctl, above, ties);
  scan_kernel<<<1, kScanThreads, 0, stream>>>(ctl, above, ties, quota, offset, tiles);
  emit_kernel<X, S><<<unsigned(tiles), kThreads, 0, stream>>>(x, s, n, ctl, quota, offset,
                                                               static_cast<SS*>(values), indices);
  check_launch("kernel launch");
}

}  // namespace

size_t topk_compress_workspace_bytes(int64_t n, int64_t) { return n > 0 ? layout(n).total : 0; }

void topk_compress(const void* x, DType x_dtype, void* state, DType state_dtype, int64_t n, int64_t k,
                   void* values, int64_t* indices, void* workspace, size_t workspace_bytes, void* stream) {
  if (n < 0 || n > INT32_MAX) throw std::invalid_argument("topk_compress: n must be in [0, 2**31 - 1]");
  if (k < 0 || k > n) throw std::invalid_argument("topk_compress: k must be in [0, n]");
  if (k > 0 && workspace_bytes < topk_compress_workspace_bytes(n, k))
    throw std::invalid_argument("topk_compress: workspace too small (use topk_compress_workspace_bytes)");
  bool supported = topk::dispatch_pair(x_dtype, state_dtype, [&](auto xtag, auto stag) {
    if (k > 0)
      run<decltype(xtag), decltype(stag)>(x, state, n, k, values, indices, static_cast<char*>(workspace),
                                          static_cast<cudaStream_t>(stream));
  });
  if (!supported)
    throw std::invalid_argument("topk_compress: unsupported dtypes (x f32/f16/bf16; state x's dtype or f32)");
}

}  // namespace osmos::cuda
