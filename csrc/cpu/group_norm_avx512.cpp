#include "cpu/group_norm_impl.h"

namespace osmos::cpu::group_norm_impl {
OSMOS_GROUP_NORM_ENTRY_POINTS(avx512)
}
