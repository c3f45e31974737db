// GF(2^8) matrix times blocks on the GPU: dst[r][i] = XOR_j matrix[r][j] * src[j][i].
// Products use the packed shift-and-add of osmos/gf256.h (the CPU scalar kernel's arithmetic,
// so both backends share one definition): each source word is expanded once into its 8
// multiples by x^b, and each output row then costs 8 AND + 8 XOR per word. No tables, no
// shared-memory bank conflicts; throughput is bounded by memory traffic for small r.
#include <cuda_runtime.h>

#include <cstdint>

#include "osmos/gf256.h"

namespace osmos::cuda_kernels {
namespace {

namespace gf = osmos::gf256;

constexpr int kRowsPerBlock = 4;  // output rows per thread block (grid.y walks row groups)
constexpr int kThreads = 256;
constexpr int kMaxGridX = 8192;   // grid-stride loop beyond this

// kVector: each thread unit is 16 bytes (uint4), all pointers 16-byte aligned, units cover
// [0, 16 * units). Otherwise each unit is one byte at begin + unit.
template <bool kVector>
__global__ void __launch_bounds__(kThreads) gf256_matmul_kernel(
    const uint8_t* __restrict__ matrix, const uint64_t* __restrict__ src, const uint64_t* __restrict__ dst,
    int rows, int k, int64_t begin, int64_t units) {
  __shared__ uint8_t coef[kRowsPerBlock * gf::kMaxBlocks];
  __shared__ uint64_t sources[gf::kMaxBlocks];
  const int row0 = blockIdx.y * kRowsPerBlock;
  const int nrows = min(kRowsPerBlock, rows - row0);
  for (int t = threadIdx.x; t < nrows * k; t += blockDim.x) coef[t] = matrix[row0 * k + t];
  for (int t = threadIdx.x; t < k; t += blockDim.x) sources[t] = src[t];
  __syncthreads();

  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < units; u += stride) {
    if constexpr (kVector) {
      uint4 acc[kRowsPerBlock];
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r) acc[r] = make_uint4(0, 0, 0, 0);
      for (int j = 0; j < k; ++j) {
        const uint4 v = reinterpret_cast<const uint4*>(sources[j])[u];
        const gf::PackedPowers<uint32_t> px(v.x), py(v.y), pz(v.z), pw(v.w);
#pragma unroll
        for (int r = 0; r < kRowsPerBlock; ++r) {
          if (r < nrows) {
            const uint8_t c = coef[r * k + j];
            acc[r].x ^= px.times(c);
            acc[r].y ^= py.times(c);
            acc[r].z ^= pz.times(c);
            acc[r].w ^= pw.times(c);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r)
        if (r < nrows) reinterpret_cast<uint4*>(dst[row0 + r])[u] = acc[r];
    } else {
      const int64_t i = begin + u;
      uint32_t acc[kRowsPerBlock] = {0, 0, 0, 0};
      for (int j = 0; j < k; ++j) {
        const gf::PackedPowers<uint32_t> p(reinterpret_cast<const uint8_t*>(sources[j])[i]);
#pragma unroll
        for (int r = 0; r < kRowsPerBlock; ++r)
          if (r < nrows) acc[r] ^= p.times(coef[r * k + j]);
      }
#pragma unroll
      for (int r = 0; r < kRowsPerBlock; ++r)
        if (r < nrows) reinterpret_cast<uint8_t*>(dst[row0 + r])[i] = uint8_t(acc[r]);
    }
  }
}

unsigned grid_x(int64_t units) {
  const int64_t blocks = (units + kThreads - 1) / kThreads;
  return unsigned(blocks < kMaxGridX ? blocks : kMaxGridX);
}

}  // namespace

// matrix: [rows, k] on the device; src / dst: device arrays of k / rows block addresses.
// aligned16: every block address is a multiple of 16 (enables 16-byte accesses).
// Requires 1 <= k <= 256, 0 <= rows <= 256.
cudaError_t gf256_matmul(const uint8_t* matrix, int rows, int k, const uint64_t* src, const uint64_t* dst,
                         int64_t len, bool aligned16, cudaStream_t stream) {
  if (rows <= 0 || len <= 0) return cudaSuccess;
  const unsigned row_groups = unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  const int64_t vector_units = aligned16 ? len / 16 : 0;
  if (vector_units > 0) {
    gf256_matmul_kernel<true><<<dim3(grid_x(vector_units), row_groups), kThreads, 0, stream>>>(
        matrix, src, dst, rows, k, 0, vector_units);
  }
  const int64_t tail_begin = vector_units * 16;
  if (len > tail_begin) {
    gf256_matmul_kernel<false><<<dim3(grid_x(len - tail_begin), row_groups), kThreads, 0, stream>>>(
        matrix, src, dst, rows, k, tail_begin, len - tail_begin);
  }
  return cudaGetLastError();
}

}  // namespace osmos::cuda_kernels
