// CPU TopK EF21 compression: exact O(n) selection in one fused pass over x and state.
//
// 1. A strided sample of 8192 magnitude keys estimates a low threshold that, with margin, sits
//    below the k-th largest key.
// 2. One pass per thread chunk computes d = x - state and appends (d, index) of every element
//    whose key is >= low to that thread's candidate buffer (in index order; AVX-512 or scalar).
// 3. An exact radix select (11/11/10-bit digits, per-thread histograms) over the candidates finds
//    the k-th key and how many of its ties to keep (lowest indices first), then each thread
//    writes its winners at its prefix-sum offset, so the output ascends, and updates state.
// When the estimate fails (fewer than k candidates, or a buffer would overflow, e.g. all-equal
// input), or n is small, step 3 runs over x and state directly: exact either way.
#include "cpu/topk_compress.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"
#include "osmos/topk.h"

namespace osmos::cpu {
namespace {

using topk::magnitude_key;

template <class X, class S>
int64_t candidates_scalar(const void* xv, const void* sv, int64_t begin, int64_t end, uint32_t low,
                          float* d_out, uint32_t* index_out, int64_t capacity) {
  auto* x = static_cast<const typename X::storage*>(xv);
  auto* s = static_cast<const typename S::storage*>(sv);
  const int64_t limit = capacity - 16;
  int64_t count = 0;
  for (int64_t i = begin; i < end; ++i) {
    float d = topk::diff<X, S>(x[i], s[i]);
    if (magnitude_key(d) >= low) {
      if (count >= limit) return -1;
      d_out[count] = d;
      index_out[count] = uint32_t(i);
      ++count;
    }
  }
  return count;
}

// Runs fn(part) for parts 0..parts-1: one thread each when `parallel`, else all on this thread
// (small work: a thread start costs more than it saves, most of all on a busy machine).
template <class F>
void run_parts(int parts, bool parallel, F&& fn) {
  parallel_chunks(parts, parallel ? parts : 1, [&](int, int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) fn(int(p));
  });
}

// x and state split into `parts` contiguous chunks; scan(p, f) calls f(key, index, d) in order.
template <class X, class S>
struct DenseSource {
  const typename X::storage* x;
  const typename S::storage* s;
  int64_t n;
  int parts;
  int64_t begin(int p) const { return n * p / parts; }
  int64_t size(int p) const { return begin(p + 1) - begin(p); }
  template <class F>
  void scan(int p, F&& f, bool = false) const {
    for (int64_t i = begin(p), e = begin(p + 1); i < e; ++i) {
      float d = topk::diff<X, S>(x[i], s[i]);
      f(magnitude_key(d), i, d);
    }
  }
};

// Per-thread candidate buffers filled by a CandidateFn (uninitialised until written).
struct CandidateSource {
  std::vector<std::unique_ptr<float[]>> d;
  std::vector<std::unique_ptr<uint32_t[]>> index;
  std::vector<int64_t> count;
  // The state, element size in bytes: the last scan (which emits the winners and updates their
  // state entries, scattered over memory the candidate pass has long evicted) prefetches the
  // entries of the candidates kPrefetchAhead positions on.
  const char* state = nullptr;
  int state_bytes = 0;
  static constexpr int64_t kPrefetchAhead = 48;
  int64_t size(int p) const { return count[p]; }
  template <class F>
  void scan(int p, F&& f, bool emitting = false) const {
    const float* dp = d[p].get();
    const uint32_t* ip = index[p].get();
    const int64_t e = count[p];
    int64_t j = 0;
    if (emitting && state) {
      for (; j + kPrefetchAhead < e; ++j) {
        __builtin_prefetch(state + int64_t(ip[j + kPrefetchAhead]) * state_bytes, 1);
        f(magnitude_key(dp[j]), int64_t(ip[j]), dp[j]);
      }
    }
    for (; j < e; ++j) f(magnitude_key(dp[j]), int64_t(ip[j]), dp[j]);
  }
};

// Exact top-k of src by key, ties to the lower index: calls emit(position, index, d) for each
// winner, positions ascending with index. take_all (k == total) skips the select.
template <class Src, class Emit>
void select_and_emit(const Src& src, int parts, bool parallel, int64_t k, bool take_all, Emit&& emit) {
  uint32_t prefix = 0, mask = 0;  // winners: (key & mask) > prefix, or == prefix up to the tie quota
  int64_t ties_needed = k;
  std::vector<int64_t> above(parts, 0), ties(parts, 0);
  if (take_all) {
    for (int p = 0; p < parts; ++p) ties[p] = src.size(p);
  } else {
    std::vector<std::array<uint32_t, topk::kRadixBins>> hist(parts);
    for (int level = 0; level < topk::kLevels; ++level) {
      const int shift = topk::level_shift(level);
      const uint32_t digit = topk::level_digit_mask(level);
      run_parts(parts, parallel, [&](int p) {
        auto& h = hist[p];
        h.fill(0);
        src.scan(p, [&](uint32_t key, int64_t, float) {
          if ((key & mask) == prefix) ++h[(key >> shift) & digit];
        });
      });
      // Highest bin whose cumulative count from the top reaches ties_needed.
      int64_t higher = 0, in_bin = 0;
      int bin = int(digit);
      for (; bin > 0; --bin) {
        in_bin = 0;
        for (int p = 0; p < parts; ++p) in_bin += hist[p][bin];
        if (higher + in_bin >= ties_needed) break;
        higher += in_bin;
      }
      if (bin == 0) {
        in_bin = 0;
        for (int p = 0; p < parts; ++p) in_bin += hist[p][0];
      }
      for (int p = 0; p < parts; ++p) {
        for (uint32_t b = uint32_t(bin) + 1; b <= digit; ++b) above[p] += hist[p][b];
        ties[p] = hist[p][bin];
      }
      ties_needed -= higher;
      prefix |= uint32_t(bin) << shift;
      mask |= digit << shift;
      if (in_bin == ties_needed) break;  // the whole bin is kept: lower digits do not matter
    }
  }
  std::vector<int64_t> quota(parts), offset(parts);
  int64_t left = ties_needed, position = 0;
  for (int p = 0; p < parts; ++p) {
    quota[p] = std::min(ties[p], left);
    left -= quota[p];
    offset[p] = position;
    position += above[p] + quota[p];
  }
  run_parts(parts, parallel, [&](int p) {
    if (above[p] + quota[p] == 0) return;
    int64_t out = offset[p], taken = 0;
    const int64_t want = quota[p];
    src.scan(p, [&](uint32_t key, int64_t i, float d) {
      const uint32_t m = key & mask;
      if (m > prefix || (m == prefix && taken < want)) {
        taken += (m == prefix);
        emit(out++, i, d);
      }
    }, true);
  });
}

constexpr int64_t kSamples = 8192;
constexpr int64_t kGrain = int64_t(1) << 18;  // elements worth a thread of their own

// Low threshold from a strided sample: its rank sits ~4 sigma + 16 below the expected k-th.
// Returns false when the candidate pass would not pay (small n, k near n, low == 0).
template <class X, class S>
bool estimate_low(const typename X::storage* x, const typename S::storage* s, int64_t n, int64_t k,
                  uint32_t* low, int64_t* expected) {
  if (n < 8 * kSamples) return false;
  std::vector<uint32_t> keys(kSamples);
  for (int64_t j = 0; j < kSamples; ++j) {
    int64_t i = (2 * j + 1) * n / (2 * kSamples);
    keys[j] = magnitude_key(topk::diff<X, S>(x[i], s[i]));
  }
  const double q = double(k) * kSamples / double(n);
  const int64_t rank = int64_t(q + 4.0 * std::sqrt(q) + 16.0);
  if (rank >= kSamples / 2) return false;
  std::nth_element(keys.begin(), keys.begin() + rank, keys.end(), std::greater<uint32_t>());
  *low = keys[rank];
  *expected = int64_t(double(rank + 1) / kSamples * double(n));
  return *low != 0;
}

CandidateFn pick_candidate_fn(DType xt, DType st) {
  if (isa() == Isa::avx512) {
    if (CandidateFn fn = candidate_fn_avx512(xt, st)) return fn;
  }
  return candidate_fn_scalar(xt, st);
}

template <class X, class S>
void run(const void* xv, void* sv, int64_t n, int64_t k, void* values, int64_t* indices,
         int max_threads) {
  auto* x = static_cast<const typename X::storage*>(xv);
  auto* s = static_cast<typename S::storage*>(sv);
  auto* out = static_cast<typename S::storage*>(values);
  auto emit = [&](int64_t position, int64_t i, float d) {
    out[position] = S::from_float(d);
    indices[position] = i;
    s[i] = S::from_float(S::to_float(s[i]) + d);
  };
  const int parts = threads_for(n, max_threads, kGrain);
  const DenseSource<X, S> dense{x, s, n, parts};
  if (k == n) return select_and_emit(dense, parts, true, k, true, emit);

  uint32_t low = 0;
  int64_t expected = 0;
  if (estimate_low<X, S>(x, s, n, k, &low, &expected)) {
    const CandidateFn fn = pick_candidate_fn(X::code, S::code);
    CandidateSource cands;
    cands.count.assign(parts, 0);
    cands.state = reinterpret_cast<const char*>(s);
    cands.state_bytes = int(sizeof(*s));
    std::vector<int64_t> capacity(parts);
    for (int p = 0; p < parts; ++p) {
      // Each part may hold twice the expected total (inputs whose large entries cluster in one
      // chunk); the buffers are uninitialised, so only pages written are touched.
      capacity[p] = std::min(dense.size(p), 2 * expected + 4096) + 16;
      cands.d.emplace_back(new float[capacity[p]]);
      cands.index.emplace_back(new uint32_t[capacity[p]]);
    }
    run_parts(parts, true, [&](int p) {
      cands.count[p] = fn(x, s, dense.begin(p), dense.begin(p + 1), low, cands.d[p].get(),
                          cands.index[p].get(), capacity[p]);
    });
    bool ok = true;
    int64_t total = 0;
    for (int p = 0; p < parts; ++p) {
      if (cands.count[p] < 0) ok = false;
      total += cands.count[p];
    }
    if (ok && total >= k) return select_and_emit(cands, parts, total >= kGrain, k, false, emit);
  }
  select_and_emit(dense, parts, true, k, false, emit);
}

}  // namespace

CandidateFn candidate_fn_scalar(DType xt, DType st) {
  CandidateFn fn = nullptr;
  topk::dispatch_pair(xt, st, [&](auto xtag, auto stag) {
    fn = &candidates_scalar<decltype(xtag), decltype(stag)>;
  });
  return fn;
}

void topk_compress(const void* x, DType x_dtype, void* state, DType state_dtype, int64_t n,
                   int64_t k, void* values, int64_t* indices, int max_threads) {
  if (n < 0 || n > INT32_MAX) throw std::invalid_argument("topk_compress: n must be in [0, 2**31 - 1]");
  if (k < 0 || k > n) throw std::invalid_argument("topk_compress: k must be in [0, n]");
  bool supported = topk::dispatch_pair(x_dtype, state_dtype, [&](auto xtag, auto stag) {
    if (k > 0) run<decltype(xtag), decltype(stag)>(x, state, n, k, values, indices, max_threads);
  });
  if (!supported)
    throw std::invalid_argument("topk_compress: unsupported dtypes (x f32/f16/bf16; state x's dtype or f32)");
}

}  // namespace osmos::cpu
