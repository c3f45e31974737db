// CRC-32C: scalar kernel, the stride operator of the interleaved kernels, dispatch and threads.
#include "cpu/crc32c.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"
#include "osmos/crc32c.h"

namespace osmos::cpu {
namespace {

namespace c = osmos::crc32c;

// tables[j][b]: register after feeding byte b followed by j zero bytes (slicing-by-8).
struct SliceTables {
  uint32_t t[8][256];
  SliceTables() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t r = b;
      for (int i = 0; i < 8; ++i) r = (r & 1u) ? (r >> 1) ^ c::kPolynomial : r >> 1;
      t[0][b] = r;
    }
    for (int j = 1; j < 8; ++j)
      for (int b = 0; b < 256; ++b) t[j][b] = (t[j - 1][b] >> 8) ^ t[0][t[j - 1][b] & 0xFF];
  }
};

const SliceTables& slice_tables() {
  static const SliceTables tables;
  return tables;
}

// shift[j][b] = (b << 8j) * x^(8 * kCrc32cStride) mod P: the stride operator, byte by byte.
struct ShiftTables {
  uint32_t t[4][256];
  ShiftTables() {
    const uint32_t op = c::x_pow_8n(kCrc32cStride);
    for (int j = 0; j < 4; ++j)
      for (uint32_t b = 0; b < 256; ++b) t[j][b] = c::multiply(op, b << (8 * j));
  }
};

const ShiftTables& shift_tables() {
  static const ShiftTables tables;
  return tables;
}

using RawKernel = uint32_t (*)(uint32_t, const uint8_t*, uint8_t*, size_t);

RawKernel raw_kernel() {
  switch (isa()) {
    case Isa::avx512: return use_vpclmul() ? crc32c_raw_vpclmul : crc32c_raw_avx512;
    case Isa::avx2: return crc32c_raw_avx2;
    default: return crc32c_raw_scalar;
  }
}

constexpr int64_t kBytesPerThread = int64_t(1) << 20;

}  // namespace

uint32_t crc32c_shift_stride(uint32_t reg) {
  const ShiftTables& s = shift_tables();
  return s.t[0][reg & 0xFF] ^ s.t[1][(reg >> 8) & 0xFF] ^ s.t[2][(reg >> 16) & 0xFF] ^ s.t[3][reg >> 24];
}

uint32_t crc32c_raw_scalar(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n) {
  if (dst != nullptr) std::memcpy(dst, src, n);
  const SliceTables& s = slice_tables();
  for (; n >= 8; n -= 8, src += 8) {
    uint64_t w;
    std::memcpy(&w, src, 8);  // little-endian: the first byte is the low byte
    w ^= reg;
    reg = s.t[7][w & 0xFF] ^ s.t[6][(w >> 8) & 0xFF] ^ s.t[5][(w >> 16) & 0xFF] ^ s.t[4][(w >> 24) & 0xFF] ^
          s.t[3][(w >> 32) & 0xFF] ^ s.t[2][(w >> 40) & 0xFF] ^ s.t[1][(w >> 48) & 0xFF] ^ s.t[0][w >> 56];
  }
  for (; n > 0; --n, ++src) reg = (reg >> 8) ^ s.t[0][(reg ^ *src) & 0xFF];
  return reg;
}

uint32_t crc32c_update(uint32_t crc, const uint8_t* src, uint8_t* dst, size_t n) {
  shift_tables();  // build the tables before any kernel thread needs them
  return ~raw_kernel()(~crc, src, dst, n);
}

void copy_crc32c(const Crc32cSpan* spans, int count, uint32_t* crcs, int nthreads) {
  std::vector<int64_t> start(size_t(count) + 1, 0);  // byte offset of each span in the concatenation
  for (int i = 0; i < count; ++i) start[i + 1] = start[i] + spans[i].nbytes;
  const int64_t total = start[count];
  const int nt = threads_for(total, nthreads, kBytesPerThread);
  const RawKernel kernel = raw_kernel();
  shift_tables();
  // Thread t checksums bytes [total*t/nt, total*(t+1)/nt): the tail of one span, whole spans,
  // the head of another. pieces[t] holds (span, crc, length) of each piece in order.
  struct Piece { int span; uint32_t crc; int64_t len; };
  std::vector<std::vector<Piece>> pieces(nt);
  parallel_chunks(total, nt, [&](int t, int64_t begin, int64_t end) {
    int i = int(std::upper_bound(start.begin(), start.end(), begin) - start.begin()) - 1;
    for (int64_t pos = begin; pos < end; ++i) {
      if (spans[i].nbytes == 0) continue;
      const int64_t off = pos - start[i], len = std::min(end, start[i + 1]) - pos;
      uint8_t* dst = spans[i].dst ? spans[i].dst + off : nullptr;
      pieces[t].push_back({i, ~kernel(~0u, spans[i].src + off, dst, size_t(len)), len});
      pos += len;
    }
  });
  for (int i = 0; i < count; ++i) crcs[i] = 0;
  for (const auto& list : pieces)
    for (const Piece& p : list) crcs[p.span] = osmos::crc32c::combine(crcs[p.span], p.crc, uint64_t(p.len));
}

}  // namespace osmos::cpu
