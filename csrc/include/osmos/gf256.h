// GF(2^8) arithmetic for Reed-Solomon erasure coding: the one definition of the field, its
// tables and the generator matrix, shared by the CPU kernels (csrc/cpu/gf256_matmul*.cpp) and
// the CUDA kernel (csrc/cuda/gf256_matmul.cu), so every backend computes identical parity.
//
// Field: GF(2)[x] / (x^8 + x^4 + x^3 + x^2 + 1), i.e. polynomial 0x11D, the polynomial ISA-L
// uses; x (= 2) is a primitive element. Addition is XOR.
//
// Generator matrix of the systematic code RS(k, m), (k + m) x k, row-major:
//   rows 0 .. k-1:        the identity (data blocks are stored as they are);
//   row k + p, column j:  1 / ((k + p) XOR j)      for p in [0, m), j in [0, k).
// This is a Cauchy matrix with x_i = k + p and y_j = j (disjoint sets of field elements, as
// k + m <= 256), so every square submatrix of the parity rows is invertible and any k of the
// k + m rows form an invertible matrix: any k blocks recover the data. It is the same matrix
// as ISA-L's gf_gen_cauchy1_matrix, so parity matches ISA-L's byte for byte (tested).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "osmos/hd.h"

namespace osmos::gf256 {

constexpr unsigned kPolynomial = 0x11D;
constexpr uint8_t kReduction = uint8_t(kPolynomial & 0xFF);  // x^8 = x^4 + x^3 + x^2 + 1
constexpr int kMaxBlocks = 256;                               // k + m <= 256

// a * x
OSMOS_HD constexpr uint8_t xtime(uint8_t a) {
  return uint8_t((a << 1) ^ ((a & 0x80) ? kReduction : 0));
}

// a * b by shift-and-add: the definition every table and kernel is checked against.
OSMOS_HD constexpr uint8_t mul(uint8_t a, uint8_t b) {
  uint8_t p = 0;
  for (int i = 0; i < 8; ++i) {
    if (b & 1) p ^= a;
    a = xtime(a);
    b >>= 1;
  }
  return p;
}

// ---- packed arithmetic: every byte of an integer word W at once (used by the scalar CPU
// kernel on uint64_t and by the CUDA kernel on uint32_t words) ----------------------------

template <class W>
OSMOS_HD constexpr W repeat_byte(uint8_t b) {
  return W(W(~W(0)) / W(0xFF)) * W(b);
}

// xtime of every byte of v.
template <class W>
OSMOS_HD W xtime_packed(W v) {
  const W carry = (v >> 7) & repeat_byte<W>(0x01);
  return W(((v & repeat_byte<W>(0x7F)) << 1) ^ (carry * W(kReduction)));
}

// v, v*x, ..., v*x^7 per byte; times(c) then costs 8 AND + 8 XOR for any c, so one source
// word is expanded once and multiplied by every output row's coefficient.
template <class W>
struct PackedPowers {
  W p[8];
  OSMOS_HD explicit PackedPowers(W v) {
#pragma unroll
    for (int b = 0; b < 8; ++b) {
      p[b] = v;
      v = xtime_packed(v);
    }
  }
  OSMOS_HD W times(uint8_t c) const {
    W acc = 0;
#pragma unroll
    for (int b = 0; b < 8; ++b) acc ^= p[b] & (W(0) - W((c >> b) & 1));
    return acc;
  }
};

// ---- host-side tables and matrices -------------------------------------------------------

struct Tables {
  uint8_t exp[512];  // exp[i] = x^i, repeated so exp[log a + log b] needs no modulo
  uint8_t log[256];  // log[a] for a != 0; log[0] = 0 is a placeholder (0 has no logarithm)
};

constexpr Tables make_tables() {
  Tables t{};
  uint8_t v = 1;
  for (int i = 0; i < 255; ++i) {
    t.exp[i] = v;
    t.exp[i + 255] = v;
    t.log[v] = uint8_t(i);
    v = xtime(v);
  }
  t.exp[510] = t.exp[0];
  t.exp[511] = t.exp[1];
  return t;
}

inline const Tables& tables() {
  static constexpr Tables t = make_tables();
  return t;
}

// 1 / a for a != 0; inverse(0) = 0 by convention (0 has no inverse).
inline uint8_t inverse(uint8_t a) {
  return a == 0 ? 0 : tables().exp[255 - tables().log[a]];
}

// Generator matrix of RS(k, m) as documented at the top, (k + m) x k bytes written to out.
// Requires 1 <= k, 0 <= m, k + m <= 256.
inline void cauchy_generator(int k, int m, uint8_t* out) {
  for (int i = 0; i < k + m; ++i)
    for (int j = 0; j < k; ++j)
      out[i * k + j] = i < k ? uint8_t(i == j) : inverse(uint8_t(i ^ j));
}

// out = in^-1 for an n x n row-major matrix, by Gauss-Jordan elimination.
// Returns false (out unspecified) when in is singular.
inline bool invert(int n, const uint8_t* in, uint8_t* out) {
  std::vector<uint8_t> a(in, in + size_t(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) out[i * n + j] = uint8_t(i == j);
  for (int col = 0; col < n; ++col) {
    int pivot = col;
    while (pivot < n && a[pivot * n + col] == 0) ++pivot;
    if (pivot == n) return false;
    if (pivot != col) {
      for (int j = 0; j < n; ++j) {
        std::swap(a[pivot * n + j], a[col * n + j]);
        std::swap(out[pivot * n + j], out[col * n + j]);
      }
    }
    const uint8_t scale = inverse(a[col * n + col]);
    for (int j = 0; j < n; ++j) {
      a[col * n + j] = mul(a[col * n + j], scale);
      out[col * n + j] = mul(out[col * n + j], scale);
    }
    for (int row = 0; row < n; ++row) {
      const uint8_t f = a[row * n + col];
      if (row == col || f == 0) continue;
      for (int j = 0; j < n; ++j) {
        a[row * n + j] ^= mul(f, a[col * n + j]);
        out[row * n + j] ^= mul(f, out[col * n + j]);
      }
    }
  }
  return true;
}

// Split tables for the PSHUFB kernels: c * v = lo[v & 15] ^ hi[v >> 4]. Writes 32 bytes.
inline void nibble_tables(uint8_t c, uint8_t* lo_hi) {
  for (int v = 0; v < 16; ++v) {
    lo_hi[v] = mul(c, uint8_t(v));
    lo_hi[16 + v] = mul(c, uint8_t(v << 4));
  }
}

// 8x8 bit matrix A for GF2P8AFFINEQB such that affine(v, A) = c * v. Output bit i is the
// parity of (A.byte[7 - i] AND v), so A.byte[7 - i] bit j = bit i of (c * x^j).
inline uint64_t affine_matrix(uint8_t c) {
  uint64_t a = 0;
  uint8_t col = c;  // c * x^j
  for (int j = 0; j < 8; ++j) {
    for (int i = 0; i < 8; ++i)
      if ((col >> i) & 1) a |= uint64_t(1) << (8 * (7 - i) + j);
    col = xtime(col);
  }
  return a;
}

}  // namespace osmos::gf256
