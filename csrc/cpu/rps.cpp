// Randomized parameter sharing on the CPU: hashed gather (W = scale * sign * M[h]), its adjoint
// scatter-add into M, and the index / sign tables. The mapping is csrc/include/osmos/rps_hash.h.
//
// Rows are walked run by run (a run: consecutive elements whose M indices are consecutive), so
// STABLE-RPS and ROAST pay one index computation per run, not per element.
// The scatter is race-free and bitwise reproducible for any thread count: thread t owns a slice
// of M and adds, in increasing element order, every contribution that lands in its slice
// (HashedNet: hashed once, into per-slice buckets; see scatter_hashednet).
#include "cpu/rps.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"
#include "cpu/rps_avx512.h"
#include "osmos/dtype.h"
#include "osmos/rps_hash.h"

namespace osmos::cpu {
namespace {

using rps::Map;

// Element access in the compute type: float for float32 / float16 / bfloat16, double for float64.
struct F16 { uint16_t v; };
struct BF16 { uint16_t v; };
template <class T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }
inline float load(const F16* p, int64_t i) { return f16_to_f32(p[i].v); }
inline float load(const BF16* p, int64_t i) { return bf16_to_f32(p[i].v); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(double* p, int64_t i, double v) { p[i] = v; }
inline void store(F16* p, int64_t i, float v) { p[i].v = f32_to_f16(v); }
inline void store(BF16* p, int64_t i, float v) { p[i].v = f32_to_bf16(v); }

// The hashed starts in M of the tiles of one ROAST tile row, for all its tile columns (the header's
// `start`), recomputed only when the tile row changes: no division per run.
class RoastTileStarts {
 public:
  RoastTileStarts(const Map& p, int64_t cols)
      : p_(p), span_(p.m > p.tile_r * p.tile_c ? p.m - p.tile_r * p.tile_c : 1),
        col_parts_((cols + p.tile_c - 1) / p.tile_c), starts_(col_parts_.size()) {
    for (size_t cb = 0; cb < col_parts_.size(); ++cb)
      col_parts_[cb] = rps::mod_prime(rps::mod_prime(int64_t(cb)) * p.a[1]);
  }

  // starts[cb]: M index of element (0, 0) of tile (rb, cb).
  const int64_t* row(int64_t rb) {
    if (rb != rb_) {
      const int64_t row_part = rps::mod_prime(rps::mod_prime(rb) * p_.a[2]);
      for (size_t cb = 0; cb < col_parts_.size(); ++cb)
        starts_[cb] = rps::reduce(rps::mod_prime(row_part + col_parts_[cb] + p_.a[0]), span_);
      rb_ = rb;
    }
    return starts_.data();
  }

 private:
  const Map& p_;
  int64_t span_;
  std::vector<int64_t> col_parts_, starts_;
  int64_t rb_ = -1;  // the tile row `starts_` belongs to
};

// ROAST's runs of [begin, end): the index is the header's (start + (r mod tile_r) * tile_c +
// c mod tile_c) mod m, a run ending at a tile's last column or where the index wraps past m (the
// header's run_length).
template <class F>
void for_each_roast_run(const Map& p, int64_t cols, int64_t begin, int64_t end, F&& fn) {
  RoastTileStarts tiles(p, cols);
  int64_t r = begin / cols, c = begin % cols;
  for (int64_t e = begin; e < end;) {
    const int64_t rb = r / p.tile_r;
    const int64_t* starts = tiles.row(rb);
    const int64_t row_offset = (r - rb * p.tile_r) * p.tile_c;
    const int64_t row_end = std::min(cols, c + (end - e));
    int64_t cb = c / p.tile_c, cc = c - cb * p.tile_c;
    while (c < row_end) {
      const int64_t h = starts[cb] + row_offset + cc;
      const int64_t j = h < p.m ? h : h % p.m;
      const int64_t len = std::min({p.tile_c - cc, p.m - j, row_end - c});
      fn(e, r, c, j, len);
      e += len;
      c += len;
      cc += len;
      if (cc == p.tile_c) { cc = 0; ++cb; }
    }
    if (c == cols) { c = 0; ++r; }
  }
}

// Calls fn(e, r, c, j, len) for each run of elements [e, e + len) (e = r * cols + c) of the flat range
// [begin, end) of [rows, cols] whose M indices are j, j + 1, ..., j + len - 1 (runs stay in one row).
template <class F>
void for_each_run(const Map& p, int64_t cols, int64_t begin, int64_t end, F&& fn) {
  if (begin >= end) return;
  if (p.kind == rps::kRoast) return for_each_roast_run(p, cols, begin, end, fn);
  int64_t r = begin / cols, c = begin % cols;
  for (int64_t e = begin; e < end;) {
    int64_t j = rps::index(p, r, c);
    int64_t len = rps::run_length(p, r, c, j, std::min(cols - c, end - e));
    fn(e, r, c, j, len);
    e += len;
    c += len;
    if (c == cols) { c = 0; ++r; }
  }
}

// kSigns[b][q] = -1 when bit q of the byte b is set, else +1: expands 8 sign bits into factors.
struct SignTable {
  float f[256][8];
  SignTable() {
    for (int b = 0; b < 256; ++b)
      for (int q = 0; q < 8; ++q) f[b][q] = (b >> q) & 1 ? -1.0f : 1.0f;
  }
};
const SignTable kSigns;

// The sign bits of groups of 16 elements (rps::sign_bits, bit for bit), cheap when groups are
// visited in order: the sign hash is a cubic polynomial mod P in the group number, so along
// consecutive groups its values follow from three forward differences by additions mod P. Groups
// out of order cost one direct hash each; the third group in a row in order starts the differences
// (three more hashes, repaid when the order goes on: the gather's walk, not the scatter's jumps).
class SignGroups {
 public:
  explicit SignGroups(const Map& p) : p_(p) {}

  // Bits 0..15: the signs of elements 16 g .. 16 g + 15 (1: negative); bits 16..30 are not signs.
  uint32_t group(int64_t g) {
    if (g == g_) return uint32_t(d_[0]);
    in_order_ = g == g_ + 1 ? in_order_ + 1 : 0;
    if (in_order_ > 0 && stepping_) {
      for (int k = 0; k < 3; ++k) d_[k] = add(d_[k], d_[k + 1]);
    } else if (in_order_ >= 2) {
      start(g);
    } else {
      d_[0] = rps::sign_bits(p_, g);
      stepping_ = false;
    }
    g_ = g;
    return uint32_t(d_[0]);
  }

  // Bit k (k < count <= 16): the sign of the element with global index i + k; 0 without signs.
  uint32_t negative(int64_t i, int64_t count) {
    if (!p_.use_sign) return 0;
    const int shift = int(i & 15);
    uint32_t bits = (group(i >> 4) & 0xffff) >> shift;
    if (shift + count > 16) bits |= group((i >> 4) + 1) << (16 - shift);
    return bits & ((uint32_t(1) << count) - 1);
  }

 private:
  static int64_t add(int64_t a, int64_t b) { return a + b >= rps::kPrime ? a + b - rps::kPrime : a + b; }
  static int64_t sub(int64_t a, int64_t b) { return a >= b ? a - b : a - b + rps::kPrime; }

  void start(int64_t g) {
    int64_t v[4];
    for (int k = 0; k < 4; ++k) v[k] = rps::sign_bits(p_, g + k);
    d_[0] = v[0];
    d_[1] = sub(v[1], v[0]);
    d_[2] = sub(sub(v[2], v[1]), d_[1]);
    d_[3] = sub(sub(sub(v[3], v[2]), sub(v[2], v[1])), d_[2]);
    stepping_ = true;
  }

  const Map& p_;
  int64_t g_ = -2;          // the group d_[0] belongs to
  int64_t d_[4] = {};       // its sign hash and, when stepping_, the forward differences there
  int in_order_ = 0;        // groups asked for in order (each the previous one + 1) just before g_
  bool stepping_ = false;
};

// Splits the elements with global indices [i, i + len) into pieces within one group of 16 and
// calls fn(k, count, sign): elements i + k .. i + k + count - 1 have the signs sign[0 .. count)
// (sign is a contiguous array, so the loops over it vectorise).
template <class C, class F>
inline void for_each_sign_group(SignGroups& signs, int64_t i, int64_t len, F&& fn) {
  C sign[16];
  for (int64_t k = 0; k < len;) {
    int64_t shift = (i + k) & 15;
    int64_t count = std::min<int64_t>(16 - shift, len - k);
    uint32_t bits = signs.group((i + k) >> 4);
    for (int q = 0; q < 8; ++q) sign[q] = C(kSigns.f[bits & 0xff][q]);
    for (int q = 0; q < 8; ++q) sign[8 + q] = C(kSigns.f[(bits >> 8) & 0xff][q]);
    fn(k, count, sign + shift);
    k += count;
  }
}

// Elements per block of SignBlock in the float32 AVX-512 paths (2 KiB of sign words).
constexpr int64_t kSignBlock = 16384;

// The signs of the consecutive elements with global indices [i, i + count) as a bit stream, for
// the float32 AVX-512 paths: bit (i & 15) + k of the little-endian uint16 words is set when element
// i + k is negative; computed sixteen groups of 16 at a time (avx512::sign_words), with one zero
// word past the last so that any 16 signs read as two words.
class SignBlock {
 public:
  void fill(const Map& p, int64_t i, int64_t count) {
    g0_ = i >> 4;
    const int64_t words = ((i & 15) + count + 15) / 16;
    words_.resize(size_t(words + 1));
    avx512::sign_words(p, g0_, words, words_.data());
    words_[size_t(words)] = 0;
  }

  // The stream from element i's group on: its bit (i & 15) + k is element i + k's sign.
  const uint16_t* from(int64_t i) const { return words_.data() + ((i >> 4) - g0_); }

  // Bit k (k < count <= 16): the sign of element i + k.
  uint32_t negative(int64_t i, int64_t count) const {
    uint32_t bits;
    std::memcpy(&bits, from(i), sizeof bits);
    return (bits >> (i & 15)) & ((uint32_t(1) << count) - 1);
  }

 private:
  std::vector<uint16_t> words_;
  int64_t g0_ = 0;
};

// The AVX-512 run kernels apply (float32 data, an AVX-512 DQ CPU at the avx512 level).
template <class T>
bool use_avx512_runs() {
  return std::is_same_v<T, float> && isa() == Isa::avx512 && features().avx512dq;
}

// The AVX-512 HashedNet kernels apply (float32 data, m < 2^31, an AVX-512 DQ CPU at the avx512 level).
template <class T>
bool use_avx512_hashednet(const Map& p) {
  return std::is_same_v<T, float> && p.kind == rps::kHashedNet && p.m < (int64_t(1) << 31) && isa() == Isa::avx512 &&
         features().avx512dq;
}

// First element at or after `at` (and at most `end`) whose global index starts a group of 16.
inline int64_t group_start(const Map& p, int64_t at, int64_t end) {
  return std::min(end, at + ((16 - ((p.offset + at) & 15)) & 15));
}

// HashedNet (no runs: one index hash per element) over the elements [from, to): calls
// fn(at, j, sign) with element at, its M index j and its sign, in increasing at. When `vector`
// (an AVX-512 kernel: (aligned begin, end) -> where it stopped) is given and usable, it takes the
// whole groups of 16 and fn only the elements before and after them.
template <class C, class F, class V>
void for_each_hashednet(const Map& p, int64_t from, int64_t to, F&& fn, V&& vector, bool use_vector) {
  auto scalar = [&](int64_t b, int64_t e) {
    C ones[16];
    for (C& one : ones) one = C(1);
    auto piece = [&](int64_t k, int64_t count, const C* sign) {
      for (int64_t q = 0; q < count; ++q) fn(b + k + q, rps::hashednet_index(p, p.offset + b + k + q), sign[q]);
    };
    if (!p.use_sign) {
      for (int64_t k = 0; k < e - b; k += 16) piece(k, std::min<int64_t>(16, e - b - k), ones);
    } else {
      SignGroups signs(p);
      for_each_sign_group<C>(signs, p.offset + b, e - b, piece);
    }
  };
  if (!use_vector) return scalar(from, to);
  const int64_t aligned = group_start(p, from, to);
  scalar(from, aligned);
  scalar(vector(aligned, to), to);
}

// ROAST gather of the rows [r0, r1), float32 with AVX-512, when M is larger than a tile (so no
// index wraps past the end of M and every tile's part of a row is one run): row by row, the
// signs of blocks of rows as bit streams, then avx512::roast_row_f32 copies each row's runs.
// The rows [r0, r1) of a ROAST layer in order, for the float32 AVX-512 row kernels:
// fn(r, starts, row_offset, negative, first) with the row's tile starts, its offset inside its tile
// row, and its signs as a bit stream from bit `first` of `negative` (nullptr without signs),
// computed for blocks of rows at a time.
template <class F>
void for_each_roast_row(const Map& p, int64_t cols, int64_t r0, int64_t r1, F&& fn) {
  RoastTileStarts tiles(p, cols);
  SignBlock signs;
  const int64_t block_rows = std::max<int64_t>(1, kSignBlock / cols);
  for (int64_t b0 = r0; b0 < r1; b0 += block_rows) {
    const int64_t b1 = std::min(r1, b0 + block_rows);
    if (p.use_sign) signs.fill(p, p.offset + b0 * cols, (b1 - b0) * cols);
    for (int64_t r = b0; r < b1; ++r) {
      const int64_t rb = r / p.tile_r, i = p.offset + r * cols;
      fn(r, tiles.row(rb), (r - rb * p.tile_r) * p.tile_c, p.use_sign ? signs.from(i) : nullptr, int(i & 15));
    }
  }
}

void roast_gather_rows_avx512(const float* M, float* W, const Map& p, int64_t cols, int64_t r0, int64_t r1,
                              float scale, bool stream) {
  for_each_roast_row(p, cols, r0, r1, [&](int64_t r, const int64_t* starts, int64_t row_offset,
                                          const uint16_t* negative, int first) {
    avx512::roast_row_f32(M, W + r * cols, starts, row_offset, p.tile_c, cols, negative, first, scale, stream);
  });
}

// Output sizes from which the float32 AVX-512 gathers write W with non-temporal stores (see
// avx512::stream_fence): about half of a core's L2 cache, where writing W through the caches starts
// to evict the M entries it reads.
constexpr int64_t kStreamBytes = int64_t(1) << 20;

// The float32 AVX-512 gather of the elements [b, e) for STABLE-RPS, and for HashedNet where its
// AVX-512 kernel applies (ROAST: roast_gather_rows_avx512). Runs are cut at 16-element boundaries
// of W, so a 64-byte aligned W is written in whole aligned lines.
void gather_avx512(const float* M, float* W, const Map& p, int64_t cols, int64_t b, int64_t e, float scale,
                   bool stream) {
  if (p.kind == rps::kHashedNet) {
    for_each_hashednet<float>(
        p, b, e, [&](int64_t at, int64_t j, float sign) { W[at] = sign * scale * M[j]; },
        [&](int64_t from, int64_t to) { return avx512::hashednet_gather_f32(M, W, p, from, to, scale, stream); }, true);
    return;
  }
  SignBlock signs;
  for (int64_t b0 = b; b0 < e; b0 += kSignBlock) {
    const int64_t b1 = std::min(e, b0 + kSignBlock);
    if (p.use_sign) signs.fill(p, p.offset + b0, b1 - b0);
    for_each_run(p, cols, b0, b1, [&](int64_t at, int64_t, int64_t, int64_t j, int64_t len) {
      for (int64_t k = 0; k < len;) {
        const int64_t count = std::min<int64_t>(16 - ((at + k) & 15), len - k);
        const uint32_t negative = p.use_sign ? signs.negative(p.offset + at + k, count) : 0;
        avx512::signed_scale_f32(M + j + k, W + at + k, count, scale, negative, stream);
        k += count;
      }
    });
  }
}

template <class T, class C = typename Compute<T>::type>
void gather_impl(const T* __restrict M, T* __restrict W, const Map& p, int64_t rows, int64_t cols, C scale,
                 int threads) {
  int64_t n = rows * cols;
  const int nt = threads_for(n, threads, 1 << 14);
  if constexpr (std::is_same_v<T, float>) {
    if (use_avx512_runs<T>()) {
      const bool stream = n * int64_t(sizeof(T)) >= kStreamBytes;
      if (p.kind == rps::kRoast && p.m > p.tile_r * p.tile_c)
        return parallel_chunks(rows, nt, [&](int, int64_t r0, int64_t r1) {
          roast_gather_rows_avx512(M, W, p, cols, r0, r1, scale, stream);
          avx512::stream_fence();
        });
      if (p.kind != rps::kHashedNet || use_avx512_hashednet<T>(p))
        return parallel_chunks(n, nt, [&](int, int64_t b, int64_t e) {
          gather_avx512(M, W, p, cols, b, e, scale, stream);
          avx512::stream_fence();
        });
    }
  }
  parallel_chunks(n, nt, [&](int, int64_t b, int64_t e) {
    if (p.kind == rps::kHashedNet) {
      for_each_hashednet<C>(
          p, b, e, [&](int64_t at, int64_t j, C sign) { store(W, at, sign * scale * load(M, j)); },
          [&](int64_t from, int64_t) { return from; }, false);
      return;
    }
    SignGroups signs(p);
    for_each_run(p, cols, b, e, [&](int64_t at, int64_t, int64_t, int64_t j, int64_t len) {
      if (!p.use_sign) {
        for (int64_t k = 0; k < len; ++k) store(W, at + k, scale * load(M, j + k));
        return;
      }
      for_each_sign_group<C>(signs, p.offset + at, len, [&](int64_t k, int64_t count, const C* sign) {
        T* __restrict w = W + at + k;
        const T* __restrict src = M + j + k;
        for (int64_t q = 0; q < count; ++q) store(w, q, sign[q] * scale * load(src, q));
      });
    });
  });
}

// Elements per round of the HashedNet scatter: with several threads, large enough that a round
// amortises starting them; with one, small enough that its buckets stay in the L1 cache.
constexpr int64_t kScatterRound = int64_t(1) << 19;
constexpr int64_t kScatterRoundOneThread = int64_t(1) << 12;

// HashedNet scatter over nt threads, in rounds of elements (acc is written: each slice is zeroed
// by its thread in the first round). In a round, thread t hashes its part
// of the round once and appends (M index, value) pairs, in increasing element order, to one bucket
// per slice of M (slice s: [m s / nt, m (s + 1) / nt)); then thread s adds the buckets of slice s,
// thread 0's first. Every acc[j] so receives its contributions in increasing element order, as
// with one thread: the result is bitwise the same for any thread count.
template <class T, class Acc>
void scatter_hashednet(const T* __restrict G, Acc* __restrict acc, const Map& p, int64_t n, Acc scale, int nt) {
  if (n == 0) return std::fill(acc, acc + p.m, Acc(0));
  const int64_t round = std::min(n, nt == 1 ? kScatterRoundOneThread : kScatterRound);
  const int64_t capacity = (round + nt - 1) / nt + 16;  // a thread's part of a round, + vector-store slack
  const int buckets = nt * nt;                           // bucket t * nt + s: thread t's entries for slice s
  std::unique_ptr<uint32_t[]> index(new uint32_t[size_t(buckets * capacity)]);
  std::unique_ptr<Acc[]> value(new Acc[size_t(buckets * capacity)]);
  std::vector<uint32_t*> index_at(buckets);
  std::vector<Acc*> value_at(buckets);
  for (int b = 0; b < buckets; ++b) {
    index_at[b] = index.get() + b * capacity;
    value_at[b] = value.get() + b * capacity;
  }
  std::vector<int64_t> lo(nt + 1), count(buckets);
  for (int s = 0; s <= nt; ++s) lo[s] = p.m * s / nt;
  const bool vector = use_avx512_hashednet<T>(p);
  for (int64_t r0 = 0; r0 < n; r0 += round) {
    std::fill(count.begin(), count.end(), 0);
    parallel_chunks(std::min(round, n - r0), nt, [&](int t, int64_t b, int64_t e) {
      uint32_t* const* idx = index_at.data() + t * nt;
      Acc* const* val = value_at.data() + t * nt;
      int64_t* cnt = count.data() + t * nt;
      for_each_hashednet<Acc>(
          p, r0 + b, r0 + e,
          [&](int64_t at, int64_t j, Acc sign) {
            int s = 0;
            while (s + 1 < nt && j >= lo[s + 1]) ++s;
            idx[s][cnt[s]] = uint32_t(j);
            val[s][cnt[s]++] = sign * (scale * Acc(load(G, at)));
          },
          [&](int64_t from, int64_t to) {
            if constexpr (std::is_same_v<T, float>)
              return avx512::hashednet_bucket_f32(G, p, from, to, scale, avx512::Buckets{lo.data(), nt, idx, val, cnt});
            return from;
          },
          vector);
    });
    parallel_chunks(nt, nt, [&](int s, int64_t, int64_t) {
      if (r0 == 0) std::fill(acc + lo[s], acc + lo[s + 1], Acc(0));
      for (int t = 0; t < nt; ++t) {
        const uint32_t* __restrict idx = index_at[t * nt + s];
        const Acc* __restrict val = value_at[t * nt + s];
        for (int64_t k = 0, c = count[t * nt + s]; k < c; ++k) acc[idx[k]] += val[k];
      }
    });
  }
}

// acc[j] = sum of scale * sign(e) * G[e] over the elements e with h(e) = j (acc is written, not
// added to). STABLE-RPS and ROAST: thread t zeroes its slice acc[lo, hi), walks every run and adds
// the parts that land in the slice (a run costs one index computation).
// ROAST scatter into the slice [lo, hi) of M (zeroed first), float32 with AVX-512, when M is larger
// than a tile: every row in order, each tile run's part that lands in the slice added at once
// (avx512::roast_row_add_f32); each entry so sums its contributions in element order.
void roast_scatter_slice_avx512(const float* G, float* acc, const Map& p, int64_t rows, int64_t cols, int64_t lo,
                                int64_t hi, float scale) {
  std::fill(acc + lo, acc + hi, 0.0f);
  for_each_roast_row(p, cols, 0, rows, [&](int64_t r, const int64_t* starts, int64_t row_offset,
                                           const uint16_t* negative, int first) {
    avx512::roast_row_add_f32(G + r * cols, acc, lo, hi, starts, row_offset, p.tile_c, cols, negative, first, scale);
  });
}

template <class T, class Acc = typename Compute<T>::type>
void scatter_impl(const T* __restrict G, Acc* __restrict acc, const Map& p, int64_t rows, int64_t cols, Acc scale,
                  int threads) {
  int64_t n = rows * cols;
  int nt = threads_for(p.m, threads_for(n, threads, 1 << 14), 1 << 10);
  if (p.kind == rps::kHashedNet) return scatter_hashednet(G, acc, p, n, scale, nt);
  if constexpr (std::is_same_v<T, float>) {
    if (p.kind == rps::kRoast && p.m > p.tile_r * p.tile_c && use_avx512_runs<T>())
      return parallel_chunks(p.m, nt, [&](int, int64_t lo, int64_t hi) {
        roast_scatter_slice_avx512(G, acc, p, rows, cols, lo, hi, scale);
      });
  }
  parallel_chunks(p.m, nt, [&](int, int64_t lo, int64_t hi) {
    std::fill(acc + lo, acc + hi, Acc(0));
    SignGroups signs(p);
    const bool vector = use_avx512_runs<T>();
    for_each_run(p, cols, 0, n, [&](int64_t at, int64_t, int64_t, int64_t j, int64_t len) {
      int64_t k0 = std::max<int64_t>(0, lo - j), k1 = std::min<int64_t>(len, hi - j);
      if (k0 >= k1) return;
      int64_t base = at + k0, jb = j + k0;
      if constexpr (std::is_same_v<T, float>) {
        if (vector) {
          for (int64_t k = 0; k < k1 - k0; k += 16) {
            const int64_t count = std::min<int64_t>(16, k1 - k0 - k);
            avx512::signed_scale_add_f32(G + base + k, acc + jb + k, count, scale,
                                         signs.negative(p.offset + base + k, count));
          }
          return;
        }
      }
      if (!p.use_sign) {
        for (int64_t k = k0; k < k1; ++k) acc[j + k] += scale * Acc(load(G, at + k));
        return;
      }
      for_each_sign_group<Acc>(signs, p.offset + base, k1 - k0, [&](int64_t k, int64_t count, const Acc* sign) {
        Acc* __restrict out = acc + jb + k;
        const T* __restrict g = G + base + k;
        for (int64_t q = 0; q < count; ++q) out[q] += sign[q] * (scale * Acc(load(g, q)));
      });
    });
  });
}

}  // namespace

void rps_gather(const void* M, void* W, DType dtype, const int64_t* config, int64_t rows, int64_t cols,
                double scale, int threads) {
  Map p = rps::map_from_config(config);
  switch (dtype) {
    case DType::f32: gather_impl(static_cast<const float*>(M), static_cast<float*>(W), p, rows, cols, float(scale), threads); break;
    case DType::f16: gather_impl(static_cast<const F16*>(M), static_cast<F16*>(W), p, rows, cols, float(scale), threads); break;
    case DType::bf16: gather_impl(static_cast<const BF16*>(M), static_cast<BF16*>(W), p, rows, cols, float(scale), threads); break;
    case DType::f64: gather_impl(static_cast<const double*>(M), static_cast<double*>(W), p, rows, cols, scale, threads); break;
    default: throw std::invalid_argument("rps_gather: unsupported dtype");
  }
}

void rps_scatter(const void* G, DType dtype, void* acc, const int64_t* config, int64_t rows, int64_t cols,
                 double scale, int threads) {
  Map p = rps::map_from_config(config);
  float* a32 = static_cast<float*>(acc);
  switch (dtype) {
    case DType::f32: scatter_impl(static_cast<const float*>(G), a32, p, rows, cols, float(scale), threads); break;
    case DType::f16: scatter_impl(static_cast<const F16*>(G), a32, p, rows, cols, float(scale), threads); break;
    case DType::bf16: scatter_impl(static_cast<const BF16*>(G), a32, p, rows, cols, float(scale), threads); break;
    case DType::f64: scatter_impl(static_cast<const double*>(G), static_cast<double*>(acc), p, rows, cols, scale, threads); break;
    default: throw std::invalid_argument("rps_scatter: unsupported dtype");
  }
}

void rps_indices(int64_t* index, int8_t* sign, const int64_t* config, int64_t rows, int64_t cols, int threads) {
  Map p = rps::map_from_config(config);
  int64_t n = rows * cols;
  parallel_chunks(n, threads_for(n, threads, 1 << 14), [&](int, int64_t b, int64_t e) {
    for (int64_t at = b; at < e; ++at) {
      index[at] = rps::index(p, at / cols, at % cols);
      sign[at] = int8_t(rps::sign_of(p, p.offset + at));
    }
  });
}

}  // namespace osmos::cpu
