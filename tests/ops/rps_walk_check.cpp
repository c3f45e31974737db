// CPU check of osmos/rps_walk.h (built and run by test_rps_walk.py): the warp-chunk walk the CUDA
// gather and scatter use gives rps::index and rps::sign for every element, for random layers of
// every mapper (small and large m, offsets past 2^32, rows shorter than a warp, odd ROAST tiles).
// The 32 lanes of a warp and the shuffle that hands out sign bits are emulated with arrays.
#include <cstdint>
#include <cstdio>
#include <random>

#include "osmos/rps_hash.h"
#include "osmos/rps_walk.h"

using namespace osmos::rps;

int main() {
  std::mt19937_64 rng(12345);
  auto below = [&](int64_t k) { return int64_t(rng() % uint64_t(k)); };
  const int64_t ms[] = {1, 3, 31, 32, 33, 500, 511, 512, 513, 5001, 100000};
  const int64_t colss[] = {1, 7, 31, 32, 33, 300, 512, 700};
  long long checked = 0, bad = 0;
  for (int trial = 0; trial < 600; ++trial) {
    Map p;
    p.kind = trial % 3;
    p.m = ms[below(11)];
    p.cols = colss[below(8)];
    const int64_t rows = 1 + below(40);
    p.offset = trial % 2 ? below(1000) : (int64_t(1) << 33) + below(1 << 20);
    p.tile_r = 1 + below(8);
    p.tile_c = 1 + below(40);
    for (int k = 0; k < 4; ++k) {
      p.a[k] = below(kPrime);
      p.s[k] = below(kPrime);
    }
    p.use_sign = trial % 5 != 0;
    const int64_t n = rows * p.cols;
    for (int64_t e0 = 0; e0 < n; e0 += kWarpChunk) {
      const int64_t group0 = sign_group0(p, e0);
      int64_t lane_bits[kLanes];
      for (int l = 0; l < kLanes; ++l) lane_bits[l] = sign_bits(p, group0 + l);
      const int64_t last = sign_bits(p, group0 + kLanes);
      for (int lane = 0; lane < kLanes; ++lane) {
        IndexWalker walk(p);
        for (int k = 0; k < kPerLane; ++k) {
          const int64_t e = e0 + lane + int64_t(k) * kLanes;
          if (e >= n) continue;
          const int64_t r = e / p.cols, c = e % p.cols;
          const int slot = sign_slot(p, e, group0);
          int sg = 1;
          if (p.use_sign) sg = sign_from_bits(p, e, slot < kLanes ? lane_bits[slot] : last);
          const int64_t got = walk.index(e);
          ++checked;
          if (slot < 0 || slot > kLanes || got != index(p, r, c) || sg != sign(p, r, c)) {
            if (++bad <= 5)
              std::printf("mismatch: kind %lld m %lld cols %lld offset %lld e %lld: index %lld vs %lld, sign %d vs %d, slot %d\n",
                          (long long)p.kind, (long long)p.m, (long long)p.cols, (long long)p.offset, (long long)e,
                          (long long)got, (long long)index(p, r, c), sg, sign(p, r, c), slot);
          }
        }
      }
    }
  }
  std::printf("checked %lld elements, %lld mismatches\n", checked, bad);
  return bad == 0 && checked > 100000 ? 0 : 1;
}
