// CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF
// (the checksum of iSCSI, ext4 and the SSE4.2 crc32 instruction; crc32c("123456789") = 0xE3069283).
//
// GF(2) polynomial arithmetic used to combine checksums of concatenated pieces. A 32-bit CRC
// register holds a polynomial of degree < 32 with x^0 in bit 31 (reflected order), so
// multiplying by x is a right shift, reduced by the polynomial when bit 0 falls off. Feeding n
// zero bytes through a register multiplies it by x^(8n) mod P, hence
//   crc(A || B) = crc(A) * x^(8 |B|) mod P  XOR  crc(B)
// for standard (pre- and post-inverted) checksums: the inversions cancel.
#pragma once
#include <cstdint>

namespace osmos::crc32c {

constexpr uint32_t kPolynomial = 0x82F63B78u;  // reflected 0x1EDC6F41
constexpr uint32_t kOne = 0x80000000u;         // the polynomial 1 (x^0 in bit 31)

// a * b mod P.
inline uint32_t multiply(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t bit = kOne; bit != 0; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1u) ? (b >> 1) ^ kPolynomial : b >> 1;
  }
  return product;
}

// x^(8 n) mod P: the operator "feed n zero bytes" (square-and-multiply over the bits of 8n).
inline uint32_t x_pow_8n(uint64_t n) {
  uint32_t result = kOne;
  uint32_t square = kOne >> 8;  // x^8
  while (n != 0) {
    if (n & 1u) result = multiply(result, square);
    square = multiply(square, square);
    n >>= 1;
  }
  return result;
}

// Checksum of A || B from crc(A), crc(B) and |B| in bytes.
inline uint32_t combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  return multiply(x_pow_8n(len_b), crc_a) ^ crc_b;
}

}  // namespace osmos::crc32c
