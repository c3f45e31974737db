// Fused injection of C rank-1 adapters into a layer's output, per row of tokens:
//   out[r, :] = y[r, :] + sum_k gamma[b(r), k] * (x[r, :] . D[k, :]) * U[k, :]
// x [rows, in] and y / out [rows, out] are f32 / f16 / bf16 (one dtype), rows = batch * tokens,
// b(r) = r / tokens. D [C, in], U [C, out] and gamma [batch, C] are f32; accumulation is f32.
// out may alias y (the in-place variant). Each row of x and y is read once and out written once.
#pragma once
#include <cstdint>

namespace osmos::cpu {

struct AdapterInjectArgs {
  const void* x;
  const void* y;
  void* out;
  const float* down;   // D [C, in]
  const float* up;     // U [C, out]
  const float* gamma;  // [batch, C]
  int dtype;           // osmos::DType of x / y / out
  int64_t batch, tokens, in, out_features, adapters;
};

// Rows [row_begin, row_end) with the portable path / the AVX-512 path; scratch holds C + in + out
// floats (the AVX-512 path uses the first C).
void adapter_inject_rows_scalar(const AdapterInjectArgs& a, int64_t row_begin, int64_t row_end, float* scratch);
void adapter_inject_rows_avx512(const AdapterInjectArgs& a, int64_t row_begin, int64_t row_end, float* scratch);

// Whole op: splits rows over up to `threads` threads and picks the ISA path at run time.
void adapter_inject(const AdapterInjectArgs& a, int threads);

}  // namespace osmos::cpu
