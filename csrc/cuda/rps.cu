// Randomized parameter sharing on CUDA: hashed gather, scatter-add into M (atomic, or
// deterministic over elements pre-sorted by M index), and the index / sign tables. The gather,
// the atomic scatter and the tables walk the mapping per warp chunk (osmos/rps_walk.h); the
// one-thread-per-element gather and scatter stay for comparison (OSMOS_RPS_CUDA_WALK=0).
// The mapping is csrc/include/osmos/rps_hash.h, shared with the CPU kernels.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/rps.h"
#include "osmos/dtype.h"
#include "osmos/rps_hash.h"
#include "osmos/rps_walk.h"

namespace osmos::cuda {
namespace {

using rps::Map;

struct F16 { uint16_t v; };
struct BF16 { uint16_t v; };
template <class T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const F16* p, int64_t i) { return f16_to_f32(p[i].v); }
__device__ __forceinline__ float load(const BF16* p, int64_t i) { return bf16_to_f32(p[i].v); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(double* p, int64_t i, double v) { p[i] = v; }
__device__ __forceinline__ void store(F16* p, int64_t i, float v) { p[i].v = f32_to_f16(v); }
__device__ __forceinline__ void store(BF16* p, int64_t i, float v) { p[i].v = f32_to_bf16(v); }
// Explicit rounding (no FMA contraction), so sums match the CPU kernel bit for bit.
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return int(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);  // grid-stride loops cover the rest
}

template <class T, class C = typename Compute<T>::type>
__global__ void gather_kernel(const T* __restrict__ M, T* __restrict__ W, Map p, int64_t n, C scale) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = e / p.cols, c = e % p.cols;
    C v = load(M, rps::index(p, r, c));
    store(W, e, mul(C(rps::sign(p, r, c)) * scale, v));
  }
}

// Warp-chunk kernels (osmos/rps_walk.h): warp w of the grid takes chunks w, w + warps, ... of
// kWarpChunk consecutive elements; lane l handles chunk + l + 32 k, walking the mapping with an
// IndexWalker, and takes its signs from the lane that hashed their group. Every lane runs the
// same number of steps (the shuffles need the whole warp); positions past n are skipped.
struct ChunkSigns {
  int64_t group0 = 0, mine = 0, last = 0;  // first group, this lane's group bits, group 32's bits
};

__device__ __forceinline__ ChunkSigns chunk_signs(const Map& p, int64_t e0, int lane) {
  ChunkSigns s;
  if (p.use_sign) {
    s.group0 = rps::sign_group0(p, e0);
    s.mine = rps::sign_bits(p, s.group0 + lane);
    s.last = rps::sign_bits(p, s.group0 + rps::kLanes);
  }
  return s;
}

__device__ __forceinline__ int chunk_sign(const Map& p, const ChunkSigns& s, int64_t e) {
  if (!p.use_sign) return 1;
  const int slot = rps::sign_slot(p, e, s.group0);
  const long long from_lane = __shfl_sync(0xffffffffu, (long long)s.mine, slot & (rps::kLanes - 1));
  return rps::sign_from_bits(p, e, slot < rps::kLanes ? int64_t(from_lane) : s.last);
}

// Calls f(e, index(e), sign(e)) for every position e < n, each warp walking its chunks.
template <class F>
__device__ __forceinline__ void walk_chunks(const Map& p, int64_t n, F&& f) {
  const int lane = threadIdx.x % rps::kLanes;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / rps::kLanes);
  for (int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / rps::kLanes; w * rps::kWarpChunk < n; w += warps) {
    const int64_t e0 = w * rps::kWarpChunk;
    const ChunkSigns signs = chunk_signs(p, e0, lane);
    rps::IndexWalker walk(p);
    for (int k = 0; k < rps::kPerLane; ++k) {
      const int64_t e = e0 + lane + int64_t(k) * rps::kLanes;
      const int sg = chunk_sign(p, signs, e);  // every lane: a warp shuffle
      if (e < n) f(e, walk.index(e), sg);
    }
  }
}

template <class T, class C = typename Compute<T>::type>
__global__ void gather_walk_kernel(const T* __restrict__ M, T* __restrict__ W, Map p, int64_t n, C scale) {
  walk_chunks(p, n, [&](int64_t e, int64_t index, int sg) { store(W, e, mul(C(sg) * scale, load(M, index))); });
}

template <class T, class C = typename Compute<T>::type>
__global__ void scatter_walk_kernel(const T* __restrict__ G, C* acc, Map p, int64_t n, C scale) {
  walk_chunks(p, n, [&](int64_t e, int64_t index, int sg) { atomicAdd(acc + index, C(sg) * mul(scale, C(load(G, e)))); });
}

inline int blocks_for_chunks(int64_t n) {
  const int64_t chunks = (n + rps::kWarpChunk - 1) / rps::kWarpChunk;
  const int64_t b = (chunks + kThreads / rps::kLanes - 1) / (kThreads / rps::kLanes);
  return int(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

template <class T, class C = typename Compute<T>::type>
__device__ __forceinline__ C contribution(const T* G, const Map& p, int64_t e, C scale) {
  int64_t r = e / p.cols, c = e % p.cols;
  return C(rps::sign(p, r, c)) * mul(scale, C(load(G, e)));
}

template <class T, class C = typename Compute<T>::type>
__global__ void scatter_atomic_kernel(const T* __restrict__ G, C* acc, Map p, int64_t n, C scale) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    atomicAdd(acc + rps::index(p, e / p.cols, e % p.cols), contribution(G, p, e, scale));
  }
}

// One thread per distinct slot: sums its elements (order[starts[u] .. starts[u+1]), ascending
// element ids) in order, so the result is bitwise reproducible and equals the CPU kernel's.
template <class T, class C = typename Compute<T>::type>
__global__ void scatter_sorted_kernel(const T* __restrict__ G, C* acc, Map p, C scale, const int64_t* order,
                                      const int64_t* slots, const int64_t* starts, int64_t nslots) {
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < nslots; u += int64_t(gridDim.x) * blockDim.x) {
    C sum = C(0);
    for (int64_t k = starts[u]; k < starts[u + 1]; ++k) sum = add(sum, contribution(G, p, order[k], scale));
    acc[slots[u]] = sum;
  }
}

__global__ void indices_kernel(int64_t* index, int8_t* sign, Map p, int64_t n) {
  walk_chunks(p, n, [&](int64_t e, int64_t i, int sg) {
    index[e] = i;
    sign[e] = int8_t(sg);
  });
}

void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Calls fn(T{}) with T the element type of `dtype`.
template <class F>
void dispatch(DType dtype, const char* what, F&& fn) {
  switch (dtype) {
    case DType::f32: fn(float{}); break;
    case DType::f64: fn(double{}); break;
    case DType::f16: fn(F16{}); break;
    case DType::bf16: fn(BF16{}); break;
    default: throw std::invalid_argument(std::string(what) + ": unsupported dtype");
  }
}

}  // namespace

void rps_gather(const void* M, void* W, DType dtype, const int64_t* config, int64_t rows, int64_t cols, double scale,
                bool walk, cudaStream_t stream) {
  Map p = rps::map_from_config(config);
  int64_t n = rows * cols;
  dispatch(dtype, "rps_gather", [&](auto tag) {
    using T = decltype(tag);
    using C = typename Compute<T>::type;
    if (walk)
      gather_walk_kernel<T><<<blocks_for_chunks(n), kThreads, 0, stream>>>(static_cast<const T*>(M), static_cast<T*>(W),
                                                                         p, n, C(scale));
    else
      gather_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(M), static_cast<T*>(W), p, n,
                                                               C(scale));
  });
  check_launch("rps_gather");
}

void rps_scatter_atomic(const void* G, DType dtype, void* acc, const int64_t* config, int64_t rows, int64_t cols,
                        double scale, bool walk, cudaStream_t stream) {
  Map p = rps::map_from_config(config);
  int64_t n = rows * cols;
  dispatch(dtype, "rps_scatter_atomic", [&](auto tag) {
    using T = decltype(tag);
    using C = typename Compute<T>::type;
    if (walk)
      scatter_walk_kernel<T><<<blocks_for_chunks(n), kThreads, 0, stream>>>(static_cast<const T*>(G),
                                                                           static_cast<C*>(acc), p, n, C(scale));
    else
      scatter_atomic_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(G), static_cast<C*>(acc),
                                                                         p, n, C(scale));
  });
  check_launch("rps_scatter_atomic");
}

void rps_scatter_sorted(const void* G, DType dtype, void* acc, const int64_t* config, double scale, const int64_t* order,
                        const int64_t* slots, const int64_t* starts, int64_t nslots, cudaStream_t stream) {
  Map p = rps::map_from_config(config);
  dispatch(dtype, "rps_scatter_sorted", [&](auto tag) {
    using T = decltype(tag);
    using C = typename Compute<T>::type;
    scatter_sorted_kernel<T><<<blocks_for(nslots), kThreads, 0, stream>>>(
        static_cast<const T*>(G), static_cast<C*>(acc), p, C(scale), order, slots, starts, nslots);
  });
  check_launch("rps_scatter_sorted");
}

void rps_indices(int64_t* index, int8_t* sign, const int64_t* config, int64_t rows, int64_t cols, cudaStream_t stream) {
  Map p = rps::map_from_config(config);
  int64_t n = rows * cols;
  indices_kernel<<<blocks_for_chunks(n), kThreads, 0, stream>>>(index, sign, p, n);
  check_launch("rps_indices");
}

}  // namespace osmos::cuda
