// osmos._C binding of the AdamW step fused with the snapshot checksum (osmos.ft.SnapshotAdamW).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "bindings/registry.h"
#include "cpu/adamw_snapshot.h"

namespace py = pybind11;
using namespace osmos::cpu;

OSMOS_BIND(adamw_snapshot) {
  m.def(
      "adamw_snapshot",
      [](const std::vector<std::vector<uintptr_t>>& ptrs, const std::vector<int64_t>& numel,
         const std::vector<double>& scalars, bool checksum, int nthreads) {
        // ptrs[i] = {p_in, g, m_in, v_in, p_out, m_out, v_out} of float32 tensor i (addresses)
        if (ptrs.size() != numel.size()) throw std::invalid_argument("ptrs and numel must have one entry per tensor");
        if (scalars.size() != 7) throw std::invalid_argument("scalars must hold 7 values");
        std::vector<AdamWTensor> ts(ptrs.size());
        for (size_t i = 0; i < ptrs.size(); ++i) {
          if (ptrs[i].size() != 7) throw std::invalid_argument("each ptrs entry must hold 7 addresses");
          if (numel[i] < 0) throw std::invalid_argument("numel must be >= 0");
          const auto& q = ptrs[i];
          ts[i] = {as_ptr<const float>(q[0]), as_ptr<const float>(q[1]), as_ptr<const float>(q[2]),
                   as_ptr<const float>(q[3]), as_ptr<float>(q[4]),       as_ptr<float>(q[5]),
                   as_ptr<float>(q[6]),       numel[i]};
        }
        AdamWScalars s{float(scalars[0]), float(scalars[1]), float(scalars[2]), float(scalars[3]),
                       float(scalars[4]), float(scalars[5]), float(scalars[6])};
        std::vector<uint32_t> crcs(checksum ? 3 * ts.size() : 0);
        {
          py::gil_scoped_release release;
          adamw_snapshot(ts.data(), int(ts.size()), s, checksum ? crcs.data() : nullptr, nthreads);
        }
        return crcs;
      },
      py::arg("ptrs"), py::arg("numel"), py::arg("scalars"), py::arg("checksum"), py::arg("nthreads"),
      "One AdamW step over float32 tensors given by address (p_in, g, m_in, v_in, p_out, m_out, "
      "v_out; outputs may alias inputs), scalars (decay, lerp_weight, beta2, 1 - beta2, "
      "sqrt(bias_correction2), eps, -step_size); with checksum, returns the CRC-32C of each output.");
}
