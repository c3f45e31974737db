"""EF21 and EF21-W error feedback for communication-compressed distributed training.

- `EF21State` + `ef21_hook`: a DDP communication hook (`model.register_comm_hook(state, ef21_hook)`,
  or `register_ef21_hook(model, state)` which checks the configuration first).
- `TopK`, `RandK`, `Identity`, `Compressor`: the compressors and the interface to add one.
- `ef21_stepsize`, `theta_beta`, `l_qm`, `l_am`: the theory's stepsize.
- `simulate` + `LogisticNonconvex`, `Quadratic`: a single-process simulator with exact bit accounting.
"""

from osmos.compress.ef21.compressors import Compressor, Identity, RandK, TopK, make_compressor
from osmos.compress.ef21.hook import ef21_hook, register_ef21_hook
from osmos.compress.ef21.problems import LogisticNonconvex, Quadratic
from osmos.compress.ef21.simulator import SimResult, simulate
from osmos.compress.ef21.state import EF21State
from osmos.compress.ef21.stepsize import ef21_stepsize, l_am, l_qm, theta_beta

__all__ = [
    "EF21State", "ef21_hook", "register_ef21_hook",
    "Compressor", "TopK", "RandK", "Identity", "make_compressor",
    "ef21_stepsize", "theta_beta", "l_qm", "l_am",
    "simulate", "SimResult", "LogisticNonconvex", "Quadratic",
]
