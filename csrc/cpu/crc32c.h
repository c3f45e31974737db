// CRC-32C checksums, alone or fused with a copy (the snapshot hot path: tensors are copied into
// shared memory and checksummed in one pass over the source).
//
// Kernels, dispatched on osmos::cpu::isa():
//   scalar  slicing-by-8 tables; the copy is memcpy.
//   avx2    the SSE4.2 crc32 instruction on three interleaved streams (its 3-cycle latency hides
//           behind the other two), 32-byte loads and non-temporal stores.
//   avx512  the same with 64-byte loads and non-temporal stores; where the CPU has VPCLMULQDQ,
//           carry-less multiplication folding four 64-byte accumulators instead.
// Non-temporal stores skip the read-for-ownership of the destination and keep a snapshot that
// nobody reads soon out of the caches the training step uses.
#pragma once
#include <cstddef>
#include <cstdint>

namespace osmos::cpu {

// One buffer to checksum, and to copy when dst is not null (dst must not overlap src).
struct Crc32cSpan {
  const uint8_t* src = nullptr;
  uint8_t* dst = nullptr;
  int64_t nbytes = 0;
};

// crcs[i] = CRC-32C of spans[i] (copied to dst when set). The bytes of all spans are split
// evenly across up to nthreads threads; pieces of one span are combined exactly.
void copy_crc32c(const Crc32cSpan* spans, int count, uint32_t* crcs, int nthreads);

// Continue a standard CRC-32C over n more bytes (crc = 0 to start), copying them to dst if set.
uint32_t crc32c_update(uint32_t crc, const uint8_t* src, uint8_t* dst, size_t n);

// The register update (no pre/post inversion) of each kernel, copying when dst is set.
uint32_t crc32c_raw_scalar(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n);
uint32_t crc32c_raw_avx2(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n);
uint32_t crc32c_raw_avx512(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n);
// Carry-less multiplication (VPCLMULQDQ + AVX-512 CPUs; see crc32c_vpclmul.cpp).
uint32_t crc32c_raw_vpclmul(uint32_t reg, const uint8_t* src, uint8_t* dst, size_t n);
// Three registers continued over three buffers of n bytes each (no copy).
void crc32c_raw3_vpclmul(uint32_t* reg, const void* a, const void* b, const void* c, size_t n);

// Interleaved kernels: each block of 3 * kCrc32cStride bytes is three streams whose registers are
// merged with the "feed kCrc32cStride zero bytes" operator, applied through four byte tables.
constexpr size_t kCrc32cStride = 4096;
uint32_t crc32c_shift_stride(uint32_t reg);

}  // namespace osmos::cpu
