// CUDA TopK EF21 compression: exact radix select, then an order-preserving compaction.
//
// Two ways, chosen on the host from (n, k) and run without any host synchronisation:
//
// Sampled (large n, k/n up to about 20%): one full pass over the data instead of five.
//   sample  one block ranks 8192 keys at jittered strided positions and takes a threshold t
//           below the k-th largest key with high probability (the sample's r-th largest key,
//           r = k/n * 8192 plus 4 standard deviations plus 8)
//   mark    the one full pass: a bitmap of the keys >= t and a count per 4096-element tile
//   cscan   tile offsets; if fewer than k or more than the buffer's capacity were marked, the
//           control block's `fallback` flag hands the work to the exact path below
//   gather  per tile, the marked keys and their indices, in index order, into a candidate buffer
//   then the exact path below over the candidates (so ties still keep the lowest indices).
//
// Exact (every n; the fallback), over the candidates or all n keys: one launch sequence serves
// both, its kernels read from the control block which input is live:
//   init    control block {prefix, mask, ties_needed, done} and a zeroed 2048-bin histogram
//   per level (11/11/10-bit digits of the magnitude key, most significant first):
//     hist    grid-stride pass: shared-memory histogram of the digit among keys matching the
//             prefix so far, flushed into the global histogram
//     choose  one warp: the bin holding the k-th largest key; updates the control block and
//             stops the remaining levels when the whole bin is kept
//   count   per 4096-element tile (grid-stride, at most 1024 blocks): how many keys are above
//           the threshold / tie with it
//   scan    one block: per tile, how many ties it keeps (lowest indices first) and where its
//           output starts (exclusive prefix sums)
//   emit    per tile (grid-stride), in rounds of 256: ballot ranks give each winner its slot, so indices
//           ascend; writes values / indices and adds values into state
// Every decision is made on the device: no host synchronisation.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
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
constexpr int kPerThread = int(kTile / kThreads);
constexpr unsigned kFull = 0xffffffffu;
constexpr int kSample = 8192;               // keys ranked by the sample kernel
constexpr int kSampleThreads = 1024;
constexpr int64_t kSampledAutoMinN = int64_t(1) << 22;  // below this the exact path is as fast
constexpr int64_t kTileBlocks = 1024;       // blocks of the exact path's per-tile kernels (grid-stride)

struct Control {
  uint32_t prefix;           // winners have (key & mask) > prefix, or == prefix within the quota
  uint32_t mask;
  long long ties_needed;     // how many keys equal to the prefix are kept
  int done;                  // no further radix level needed
  int fallback;              // 1: the exact path runs over all n keys
  uint32_t threshold;        // sampled path: the candidates are the keys >= threshold
  long long candidates;      // sampled path: how many there are
};

// How a call runs: the sampled path (with its sample rank and candidate capacity) or not.
struct Plan {
  bool sampled = false;
  int rank = 0;
  int64_t capacity = 0;
};

Plan plan_for(int64_t n, int64_t k, int algo) {
  Plan p;
  if (algo == 1 || k <= 0 || k >= n || n < 4 * int64_t(kSample)) return p;
  if (algo == 0 && n < kSampledAutoMinN) return p;
  const double expected = double(k) * kSample / double(n);
  const double rank = std::ceil(expected + 4.0 * std::sqrt(expected) + 8.0);
  if (rank > kSample / 4) return p;  // k/n above about 20%: most keys would be candidates
  p.sampled = true;
  p.rank = int(rank);
  p.capacity = std::min<int64_t>(n, int64_t(2.0 * double(n) * rank / kSample) + 4096);
  return p;
}

struct Layout {
  size_t control, hist, above, ties, quota, offset, bitmap, cand_key, cand_idx, total;
};

size_t align_up(size_t v) { return (v + 255) & ~size_t(255); }

__host__ __device__ inline int64_t tiles_for(int64_t n) { return (n + kTile - 1) / kTile; }

Layout layout(int64_t n, const Plan& plan) {
  const size_t tiles = size_t(tiles_for(n));
  Layout l;
  l.control = 0;
  l.hist = align_up(l.control + sizeof(Control));
  l.above = align_up(l.hist + sizeof(uint32_t) * topk::kRadixBins);
  l.ties = align_up(l.above + sizeof(uint32_t) * tiles);
  l.quota = align_up(l.ties + sizeof(uint32_t) * tiles);
  l.offset = align_up(l.quota + sizeof(uint32_t) * tiles);
  l.bitmap = align_up(l.offset + sizeof(long long) * tiles);
  const size_t words = plan.sampled ? size_t((n + 31) / 32) : 0;
  const size_t cap = plan.sampled ? size_t(plan.capacity) : 0;
  l.cand_key = align_up(l.bitmap + sizeof(uint32_t) * words);
  l.cand_idx = align_up(l.cand_key + sizeof(uint32_t) * cap);
  l.total = align_up(l.cand_idx + sizeof(int32_t) * cap);
  return l;
}

// Where the exact path reads its keys: the sampled path's candidates, or all n elements when
// the control block's fallback flag is set (no sampling, or its threshold failed).
__device__ __forceinline__ bool from_candidates(const Control* ctl) { return ctl->fallback == 0; }

__device__ __forceinline__ int64_t key_count(const Control* ctl, int64_t n) {
  return from_candidates(ctl) ? int64_t(ctl->candidates) : n;
}

template <class X, class S>
__device__ __forceinline__ float diff_at(const typename X::storage* x, const typename S::storage* s, int64_t i) {
  return topk::diff<X, S>(x[i], s[i]);
}

__global__ void init_kernel(Control* ctl, uint32_t* hist, long long k, int take_all, int fallback) {
  for (int b = threadIdx.x; b < topk::kRadixBins; b += blockDim.x) hist[b] = 0;
  if (threadIdx.x == 0) {
    ctl->prefix = 0;
    ctl->mask = 0;
    ctl->ties_needed = k;
    ctl->done = take_all;
    ctl->fallback = fallback;
    ctl->threshold = 0;
    ctl->candidates = 0;
  }
}

// The magnitude key of element j of the exact path's input.
template <class X, class S>
__device__ __forceinline__ uint32_t key_at(const typename X::storage* x, const typename S::storage* s,
                                           const uint32_t* cand_key, bool cand, int64_t j) {
  return cand ? cand_key[j] : magnitude_key(diff_at<X, S>(x, s, j));
}

template <class X, class S>
__global__ void __launch_bounds__(kThreads) hist_kernel(const typename X::storage* x, const typename S::storage* s,
                                                        int64_t n, const Control* ctl, uint32_t* hist, int level,
                                                        const uint32_t* cand_key) {
  if (ctl->done) return;
  const bool cand = from_candidates(ctl);
  __shared__ uint32_t h[topk::kRadixBins];
  for (int b = threadIdx.x; b < topk::kRadixBins; b += blockDim.x) h[b] = 0;
  __syncthreads();
  const uint32_t prefix = ctl->prefix, mask = ctl->mask;
  const int shift = topk::level_shift(level);
  const uint32_t digit = topk::level_digit_mask(level);
  const int64_t count = key_count(ctl, n);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint32_t key = key_at<X, S>(x, s, cand_key, cand, i);
    if ((key & mask) == prefix) atomicAdd(&h[(key >> shift) & digit], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < topk::kRadixBins; b += blockDim.x)
    if (h[b]) atomicAdd(&hist[b], h[b]);
}

// Called by all 32 lanes of one warp: the bin of `hist` (the digits of `level`) that holds the
// need-th largest key. Lane 0 owns the highest bins; a warp scan finds the lane whose bins hold
// it, and that lane walks its bins. Returns true on that one lane, with the bin and the number
// of keys in higher bins.
__device__ bool warp_select_bin(const uint32_t* hist, int level, long long need, int* bin_out, long long* higher_out) {
  const int lane = threadIdx.x & 31;
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
  const unsigned owner = __ballot_sync(kFull, excl < need && need <= incl);
  if (owner == 0 || lane != __ffs(owner) - 1) return false;
  long long higher = excl;
  int bin = hi - 1;
  for (; bin > hi - per_lane; --bin) {
    if (higher + hist[bin] >= need) break;
    higher += hist[bin];
  }
  *bin_out = bin;
  *higher_out = higher;
  return true;
}

// One warp: fixes this level's digit of the threshold in the control block.
__global__ void choose_kernel(Control* ctl, uint32_t* hist, int level) {
  if (ctl->done) return;
  const long long need = ctl->ties_needed;
  int bin;
  long long higher;
  if (warp_select_bin(hist, level, need, &bin, &higher)) {
    const int shift = topk::level_shift(level);
    ctl->ties_needed = need - higher;
    ctl->prefix |= uint32_t(bin) << shift;
    ctl->mask |= topk::level_digit_mask(level) << shift;
    if (hist[bin] == need - higher || level == topk::kLevels - 1) ctl->done = 1;
  }
  __syncwarp();
  for (int b = threadIdx.x; b < topk::kRadixBins; b += 32) hist[b] = 0;  // ready for the next level
}

// Sampled path, one block of kSampleThreads: the rank-th largest of kSample keys taken at
// jittered strided positions becomes the candidate threshold.
template <class X, class S>
__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const typename X::storage* x,
                                                                const typename S::storage* s, int64_t n, int rank,
                                                                Control* ctl) {
  __shared__ uint32_t keys[kSample];
  __shared__ uint32_t h[topk::kRadixBins];
  __shared__ uint32_t prefix, mask;
  __shared__ long long need;
  const uint64_t step = uint64_t(n) / kSample;
  for (int j = threadIdx.x; j < kSample; j += blockDim.x) {
    uint32_t z = uint32_t(j) * 0x9e3779b1u;
    z ^= z >> 15;
    z *= 0x85ebca77u;
    z ^= z >> 13;
    keys[j] = magnitude_key(diff_at<X, S>(x, s, int64_t(uint64_t(j) * step + z % step)));
  }
  if (threadIdx.x == 0) {
    prefix = 0;
    mask = 0;
    need = rank;
  }
  for (int level = 0; level < topk::kLevels; ++level) {
    for (int b = threadIdx.x; b < topk::kRadixBins; b += blockDim.x) h[b] = 0;
    __syncthreads();
    const int shift = topk::level_shift(level);
    const uint32_t digit = topk::level_digit_mask(level);
    const uint32_t p = prefix, m = mask;
    for (int j = threadIdx.x; j < kSample; j += blockDim.x)
      if ((keys[j] & m) == p) atomicAdd(&h[(keys[j] >> shift) & digit], 1u);
    __syncthreads();
    if (threadIdx.x < 32) {
      int bin;
      long long higher;
      if (warp_select_bin(h, level, need, &bin, &higher)) {
        need -= higher;
        prefix |= uint32_t(bin) << shift;
        mask |= digit << shift;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ctl->threshold = prefix;  // all 32 bits fixed: the rank-th largest key
}

// Block-wide sum of v (every thread of the block must call it); the result on thread 0.
__device__ uint32_t block_sum(uint32_t v) {
  __shared__ uint32_t warp_sums[32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFull, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  uint32_t total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < int(blockDim.x >> 5); ++w) total += warp_sums[w];
  return total;
}

// Sampled path, the one full pass: bit i of the bitmap is set when key i >= threshold, and
// count[tile] is how many bits the tile set. Loads are issued before the ballots so that each
// thread has kPerThread elements of x and of state in flight.
template <class X, class S>
__global__ void __launch_bounds__(kThreads) mark_kernel(const typename X::storage* x, const typename S::storage* s,
                                                        int64_t n, const Control* ctl, uint32_t* bitmap,
                                                        uint32_t* count) {
  const int64_t begin = int64_t(blockIdx.x) * kTile;
  const int64_t end = begin + kTile < n ? begin + kTile : n;
  const uint32_t threshold = ctl->threshold;
  bool hit[kPerThread];
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) {
    const int64_t i = begin + int64_t(r) * kThreads + threadIdx.x;
    hit[r] = i < end && magnitude_key(diff_at<X, S>(x, s, i)) >= threshold;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t c = 0;
#pragma unroll
  for (int r = 0; r < kPerThread; ++r) {
    const unsigned bits = __ballot_sync(kFull, hit[r]);
    const int64_t first = begin + int64_t(r) * kThreads + warp * 32;  // a multiple of 32
    if (lane == 0 && first < end) bitmap[first >> 5] = bits;
    c += hit[r];
  }
  const uint32_t total = block_sum(c);
  if (threadIdx.x == 0) count[blockIdx.x] = total;
}

// Per tile of the exact path's input (grid-stride over the tiles): how many keys are above the
// threshold / tie with it.
template <class X, class S>
__global__ void __launch_bounds__(kThreads) count_kernel(const typename X::storage* x, const typename S::storage* s,
                                                         int64_t n, const Control* ctl, uint32_t* above, uint32_t* ties,
                                                         const uint32_t* cand_key) {
  __shared__ uint32_t warp_above[kWarps], warp_ties[kWarps];
  const bool cand = from_candidates(ctl);
  const int64_t count = key_count(ctl, n);
  const int64_t tiles = tiles_for(count);
  const uint32_t prefix = ctl->prefix, mask = ctl->mask;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t begin = tile * kTile;
    const int64_t end = begin + kTile < count ? begin + kTile : count;
    uint32_t a = 0, t = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const uint32_t m = key_at<X, S>(x, s, cand_key, cand, i) & mask;
      a += m > prefix;
      t += m == prefix;
    }
    for (int off = 16; off > 0; off >>= 1) {
      a += __shfl_down_sync(kFull, a, off);
      t += __shfl_down_sync(kFull, t, off);
    }
    if (lane == 0) { warp_above[warp] = a; warp_ties[warp] = t; }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint32_t sa = 0, st = 0;
      for (int w = 0; w < kWarps; ++w) { sa += warp_above[w]; st += warp_ties[w]; }
      above[tile] = sa;
      ties[tile] = st;
    }
    __syncthreads();  // warp_above / warp_ties are rewritten for the next tile
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
                                                            long long* offset, int64_t n) {
  const int64_t tiles = tiles_for(key_count(ctl, n));
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

// Sampled path: where each tile's candidates start; the candidate count; and the fallback flag
// when the threshold let through fewer than k keys (it was above the k-th largest) or more than
// the buffer holds.
__global__ void __launch_bounds__(kScanThreads) candidate_scan_kernel(Control* ctl, const uint32_t* count,
                                                                      long long* offset, int64_t tiles,
                                                                      long long k, long long capacity) {
  long long before = 0;
  for (int64_t base = 0; base < tiles; base += blockDim.x) {
    const int64_t b = base + threadIdx.x;
    long long total;
    const long long excl = before + block_exclusive_scan(b < tiles ? count[b] : 0, &total);
    if (b < tiles) offset[b] = excl;
    before += total;
  }
  if (threadIdx.x == 0) {
    ctl->candidates = before;
    ctl->fallback = before < k || before > capacity;
  }
}

// Sampled path: per tile, the marked elements' keys and indices, in index order. One thread per
// bitmap word (kTile / 32 of the block's threads); positions from a block scan of the words'
// popcounts.
template <class X, class S>
__global__ void __launch_bounds__(kThreads) gather_kernel(const typename X::storage* x, const typename S::storage* s,
                                                          int64_t n, const Control* ctl, const uint32_t* bitmap,
                                                          const long long* offset, uint32_t* cand_key,
                                                          int32_t* cand_idx) {
  if (ctl->fallback) return;
  static_assert(kTile / 32 <= kThreads, "one thread per bitmap word of a tile");
  const int64_t word = int64_t(blockIdx.x) * (kTile / 32) + threadIdx.x;
  const bool valid = threadIdx.x < kTile / 32 && word * 32 < n;
  uint32_t bits = valid ? bitmap[word] : 0u;
  long long total;
  long long position = offset[blockIdx.x] + block_exclusive_scan(__popc(bits), &total);
  while (bits) {
    const int64_t i = word * 32 + (__ffs(bits) - 1);
    bits &= bits - 1;
    cand_key[position] = magnitude_key(diff_at<X, S>(x, s, i));
    cand_idx[position] = int32_t(i);
    ++position;
  }
}

// Per tile of the exact path's input (grid-stride over the tiles), in rounds of kThreads: ballot
// ranks give each winner its slot, so indices ascend; writes values / indices and adds values
// into state.
template <class X, class S>
__global__ void __launch_bounds__(kThreads) emit_kernel(const typename X::storage* x, typename S::storage* s,
                                                        int64_t n, const Control* ctl, const uint32_t* quota,
                                                        const long long* offset, typename S::storage* values,
                                                        int64_t* indices, const uint32_t* cand_key,
                                                        const int32_t* cand_idx) {
  __shared__ uint32_t warp_ties[kWarps], warp_taken[kWarps];
  const bool cand = from_candidates(ctl);
  const int64_t count = key_count(ctl, n);
  const int64_t tiles = tiles_for(count);
  const uint32_t prefix = ctl->prefix, mask = ctl->mask;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t begin = tile * kTile;
    const int64_t end = begin + kTile < count ? begin + kTile : count;
    const uint32_t tie_quota = quota[tile];
    long long out = offset[tile];
    uint32_t ties_seen = 0;
    for (int64_t base = begin; base < end; base += kThreads) {  // uniform across the block
      const int64_t j = base + threadIdx.x;
      bool is_above = false, is_tie = false;
      if (j < end) {
        const uint32_t m = key_at<X, S>(x, s, cand_key, cand, j) & mask;
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
        const int64_t i = cand ? int64_t(cand_idx[j]) : j;
        const float d = diff_at<X, S>(x, s, i);
        const long long position = out + rank;
        values[position] = S::from_float(d);
        indices[position] = i;
        s[i] = S::from_float(S::to_float(s[i]) + d);
      }
      out += taken_total;
      ties_seen += tie_total;
      __syncthreads();  // warp_ties / warp_taken are rewritten next round
    }
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("osmos topk_compress: ") + what + ": " + cudaGetErrorString(err));
}

// The exact path: radix select, count, scan, emit over the candidates or (fallback) all n keys.
// Grid sizes cover n; the kernels read which input is active from the control block.
template <class X, class S>
void exact_select(const typename X::storage* x, typename S::storage* s, int64_t n, Control* ctl, const Layout& l,
                  char* ws, const uint32_t* cand_key, const int32_t* cand_idx, typename S::storage* values,
                  int64_t* indices, bool select, cudaStream_t stream) {
  auto* hist = reinterpret_cast<uint32_t*>(ws + l.hist);
  auto* above = reinterpret_cast<uint32_t*>(ws + l.above);
  auto* ties = reinterpret_cast<uint32_t*>(ws + l.ties);
  auto* quota = reinterpret_cast<uint32_t*>(ws + l.quota);
  auto* offset = reinterpret_cast<long long*>(ws + l.offset);
  if (select) {
    const int64_t wanted = (n + kThreads * 8 - 1) / (kThreads * 8);
    const int grid = int(wanted < 1024 ? wanted : 1024);
    for (int level = 0; level < topk::kLevels; ++level) {
      hist_kernel<X, S><<<grid, kThreads, 0, stream>>>(x, s, n, ctl, hist, level, cand_key);
      choose_kernel<<<1, 32, 0, stream>>>(ctl, hist, level);
    }
  }
  const int64_t tiles = tiles_for(n);
  const unsigned grid = unsigned(tiles < kTileBlocks ? tiles : kTileBlocks);
  count_kernel<X, S><<<grid, kThreads, 0, stream>>>(x, s, n, ctl, above, ties, cand_key);
  scan_kernel<<<1, kScanThreads, 0, stream>>>(ctl, above, ties, quota, offset, n);
  emit_kernel<X, S><<<grid, kThreads, 0, stream>>>(x, s, n, ctl, quota, offset, values, indices, cand_key, cand_idx);
}

template <class X, class S>
void run(const void* xv, void* sv, int64_t n, int64_t k, int algo, void* values, int64_t* indices, char* ws,
         cudaStream_t stream) {
  using XS = typename X::storage;
  using SS = typename S::storage;
  const XS* x = static_cast<const XS*>(xv);
  SS* s = static_cast<SS*>(sv);
  auto* out_values = static_cast<SS*>(values);
  const uint32_t* cand_key = nullptr;
  const int32_t* cand_idx = nullptr;
  const Plan plan = plan_for(n, k, algo);
  const Layout l = layout(n, plan);
  auto* ctl = reinterpret_cast<Control*>(ws + l.control);
  auto* hist = reinterpret_cast<uint32_t*>(ws + l.hist);
  const int64_t tiles = tiles_for(n);

  init_kernel<<<1, 1024, 0, stream>>>(ctl, hist, k, k == n, plan.sampled ? 0 : 1);
  if (plan.sampled) {
    auto* count = reinterpret_cast<uint32_t*>(ws + l.above);
    auto* offset = reinterpret_cast<long long*>(ws + l.offset);
    auto* bitmap = reinterpret_cast<uint32_t*>(ws + l.bitmap);
    auto* keys = reinterpret_cast<uint32_t*>(ws + l.cand_key);
    auto* idx = reinterpret_cast<int32_t*>(ws + l.cand_idx);
    sample_kernel<X, S><<<1, kSampleThreads, 0, stream>>>(x, s, n, plan.rank, ctl);
    mark_kernel<X, S><<<unsigned(tiles), kThreads, 0, stream>>>(x, s, n, ctl, bitmap, count);
    candidate_scan_kernel<<<1, kScanThreads, 0, stream>>>(ctl, count, offset, tiles, k, plan.capacity);
    gather_kernel<X, S><<<unsigned(tiles), kThreads, 0, stream>>>(x, s, n, ctl, bitmap, offset, keys, idx);
    cand_key = keys;
    cand_idx = idx;
  }
  exact_select<X, S>(x, s, n, ctl, l, ws, cand_key, cand_idx, out_values, indices, k < n, stream);
  check_launch("kernel launch");
}

}  // namespace

size_t topk_compress_workspace_bytes(int64_t n, int64_t k, int algo) {
  return n > 0 ? layout(n, plan_for(n, k, algo)).total : 0;
}

void topk_compress(const void* x, DType x_dtype, void* state, DType state_dtype, int64_t n, int64_t k, int algo,
                   void* values, int64_t* indices, void* workspace, size_t workspace_bytes, void* stream) {
  if (n < 0 || n > INT32_MAX) throw std::invalid_argument("topk_compress: n must be in [0, 2**31 - 1]");
  if (k < 0 || k > n) throw std::invalid_argument("topk_compress: k must be in [0, n]");
  if (algo < 0 || algo > 2) throw std::invalid_argument("topk_compress: algo must be 0 (auto), 1 (radix) or 2 (sampled)");
  if (k > 0 && workspace_bytes < topk_compress_workspace_bytes(n, k, algo))
    throw std::invalid_argument("topk_compress: workspace too small (use topk_compress_workspace_bytes)");
  bool supported = topk::dispatch_pair(x_dtype, state_dtype, [&](auto xtag, auto stag) {
    if (k > 0)
      run<decltype(xtag), decltype(stag)>(x, state, n, k, algo, values, indices, static_cast<char*>(workspace),
                                          static_cast<cudaStream_t>(stream));
  });
  if (!supported)
    throw std::invalid_argument("topk_compress: unsupported dtypes (x f32/f16/bf16; state x's dtype or f32)");
}

}  // namespace osmos::cuda
