// osmos._C bindings of the CRC-32C checksum and the fused copy + checksum of snapshots.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "bindings/registry.h"
#include "cpu/crc32c.h"

namespace py = pybind11;
using namespace osmos::cpu;

OSMOS_BIND(crc32c) {
  m.def(
      "crc32c",
      [](uintptr_t src, int64_t nbytes, uint32_t crc) {
        if (nbytes < 0) throw std::invalid_argument("nbytes must be >= 0");
        py::gil_scoped_release release;
        return crc32c_update(crc, as_ptr<const uint8_t>(src), nullptr, size_t(nbytes));
      },
      py::arg("src"), py::arg("nbytes"), py::arg("crc") = 0,
      "CRC-32C of nbytes at address src, continuing from crc (0 to start).");
  m.def(
      "copy_crc32c",
      [](const std::vector<uintptr_t>& src, const std::vector<uintptr_t>& dst,
         const std::vector<int64_t>& nbytes, int nthreads) {
        if (src.size() != nbytes.size() || (!dst.empty() && dst.size() != src.size()))
          throw std::invalid_argument("src, dst (or empty) and nbytes must have one entry per span");
        std::vector<Crc32cSpan> spans(src.size());
        for (size_t i = 0; i < src.size(); ++i) {
          if (nbytes[i] < 0) throw std::invalid_argument("nbytes must be >= 0");
          spans[i] = {as_ptr<const uint8_t>(src[i]), dst.empty() ? nullptr : as_ptr<uint8_t>(dst[i]), nbytes[i]};
        }
        std::vector<uint32_t> crcs(spans.size());
        {
          py::gil_scoped_release release;
          copy_crc32c(spans.data(), int(spans.size()), crcs.data(), nthreads);
        }
        return crcs;
      },
      py::arg("src"), py::arg("dst"), py::arg("nbytes"), py::arg("nthreads"),
      "CRC-32C of each span (pointers as ints), copying span i from src[i] to dst[i] unless dst is "
      "empty; the bytes are split across up to nthreads threads.");
}
