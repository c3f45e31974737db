// AdamW step fused with the snapshot: the updated parameters and moments are written to a
// destination that may differ from the source (out of place, e.g. into a shared-memory snapshot
// slot) and checksummed (CRC-32C) while they are still in the L1 cache, in one pass over memory.
//
// Out of place costs no more memory traffic than in place (read p, g, m, v; write p, m, v), so a
// trainer whose parameters and optimizer state live in the snapshot slots gets a complete,
// checksummed snapshot of them for the price of the checksum (osmos.ft.SnapshotAdamW).
//
// The arithmetic is torch.optim.AdamW's single-tensor step (decoupled weight decay, lerp for the
// first moment, mul + addcmul for the second, denominator sqrt(v) / sqrt(bc2) + eps, addcdiv) in
// float32, in the same order, with fused multiply-adds exactly where torch's vectorised CPU
// kernels have them (lerp, addcmul) and nowhere else (built with -ffp-contract=off): every ISA
// path returns the same bits, and the bits of torch.optim.AdamW(foreach=False) on an AVX2 / AVX-512
// CPU. The scalar path (CPUs without AVX2) computes the same FMAs in software.
#pragma once
#include <cstdint>

namespace osmos::cpu {

// One float32 tensor's update: p_out = AdamW(p_in, g, m_in, v_in); outputs may alias their inputs.
struct AdamWTensor {
  const float* p_in = nullptr;
  const float* g = nullptr;
  const float* m_in = nullptr;
  const float* v_in = nullptr;
  float* p_out = nullptr;
  float* m_out = nullptr;
  float* v_out = nullptr;
  int64_t n = 0;
};

// Scalars, rounded to float as torch rounds Python scalars for float32 tensors.
struct AdamWScalars {
  float decay = 1.0f;          // 1 - lr * weight_decay
  float lerp_weight = 0.1f;    // 1 - beta1
  float beta2 = 0.999f;
  float one_minus_beta2 = 0.001f;
  float bc2_sqrt = 1.0f;       // sqrt(1 - beta2^step)
  float eps = 1e-8f;
  float neg_step_size = 0.0f;  // -lr / (1 - beta1^step)
};

// Updates every tensor; when crcs is not null, crcs[3 i + {0, 1, 2}] receive the CRC-32C of
// tensor i's p_out, m_out and v_out bytes. Elements are split across up to nthreads threads.
void adamw_snapshot(const AdamWTensor* tensors, int count, const AdamWScalars& s, uint32_t* crcs, int nthreads);

// The same on one ISA path, one thread, over elements [begin, end) of one tensor, continuing the
// three checksum registers reg[0..2] (raw registers: no pre/post inversion) when reg is not null.
void adamw_block_scalar(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg);
void adamw_block_avx2(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg);
void adamw_block_avx512(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg);
void adamw_block_vpclmul(const AdamWTensor& t, int64_t begin, int64_t end, const AdamWScalars& s, uint32_t* reg);

}  // namespace osmos::cpu
