"""EF21State: the per-rank state of the EF21 / EF21-W DDP communication hook."""

from __future__ import annotations

import math
import threading

import torch
import torch.distributed as dist

from osmos.compress.ef21.compressors import Compressor, make_compressor
from osmos.compress.ef21.slots import ParamSlots
from osmos.compress.ef21.weights import OnlineSmoothness, weights_from_smoothness

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over the parts); the same on every rank."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1


class EF21State:
    """State of `ef21_hook` on one rank.

    Args:
        process_group: the group DDP reduces over (None: the default group).
        ratio: fraction k/d of each parameter's gradient sent per round, in (0, 1]. Each parameter
            is compressed separately (k_p = ceil(ratio * numel_p)), so results do not depend on
            DDP's bucketing.
        weights: None for EF21 (g = mean of the g_i); a sequence of the ranks' smoothness constants
            L_i for EF21-W (w_i = L_i / sum L_j); or "online" to estimate them (see weights.py).
        compressor: "topk", "randk", "identity", "top<k>" or a `Compressor` instance.
        init: "full" (g_i^0 = the first full local gradient, one dense all_reduce per bucket the
            first time it is seen) or "zero" (g_i^0 = 0; the first round is already compressed).
        participation: probability p that a rank sends in a round (EF21-PP); the coin is seeded,
            identical on all ranks, and an absent rank keeps its g_i.
        seed: base seed of RandK and of the participation coins.
        online_momentum: EMA momentum of the online smoothness estimate.
    """

    def __init__(self, process_group=None, ratio: float = 0.01, weights=None, compressor="topk", *,
                 init: str = "full", participation: float = 1.0, seed: int = 0, online_momentum: float = 0.9):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
        if init not in ("full", "zero"):
            raise ValueError(f"init must be 'full' or 'zero', got {init!r}")
        if isinstance(participation, bool) or not isinstance(participation, (int, float)) or not 0.0 < participation <= 1.0:
            raise ValueError(f"participation must be a number in (0, 1], got {participation!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("EF21State needs torch.distributed to be initialised (dist.init_process_group)")
        self.group = process_group if process_group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        if self.rank < 0:
            raise ValueError("process_group mismatch: this process is not a member of process_group")
        self.world = dist.get_world_size(self.group)
        self.ratio = float(ratio)
        self.compressor: Compressor = make_compressor(compressor, self.ratio)
        self.init = init
        self.participation = float(participation)
        self.seed = int(seed)
        self.online = isinstance(weights, str)
        if self.online and weights != "online":
            raise ValueError(f"weights must be None, 'online' or a sequence of {self.world} smoothness constants, got {weights!r}")
        self.estimator = OnlineSmoothness(self.world, online_momentum) if self.online else None
        self.fixed_weights = None if weights is None or self.online else weights_from_smoothness(weights, self.world)
        self.weights = self.fixed_weights or [1.0 / self.world] * self.world
        self.round = 0
        self.slots = ParamSlots(("g_local", "g_global", "prev_grad") if self.online else ("g_local", "g_global"))
        self._movement: list[list[float]] = [[] for _ in range(self.world)]
        self._lock = threading.Lock()
        self._round_open = False

    # --- per-rank quantities -------------------------------------------------------------------
    def scale(self) -> float:
        """1 / (n w_i): the factor this rank applies to its gradient (1 for EF21)."""
        return 1.0 / (self.world * self.weights[self.rank])

    def participates(self, rank: int) -> bool:
        if self.participation >= 1.0:
            return True
        return mix_seed(self.seed, self.round, rank, 1) / 2**63 < self.participation

    def param_seed(self, key: int) -> int:
        return mix_seed(self.seed, self.round, key, 2)

    def check_bucket(self, buffer: torch.Tensor) -> None:
        if buffer.dtype not in SUPPORTED_DTYPES:
            names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
            raise TypeError(f"ef21_hook supports gradients of dtype {names}, got {str(buffer.dtype).replace('torch.', '')}")

    # --- round bookkeeping (called by the hook) ---------------------------------------------------
    def begin_round(self) -> None:
        """Before the first bucket of a round: apply the online weight update of the last round."""
        if self._round_open:
            return
        self._round_open = True
        movement = [math.fsum(parts) for parts in self._movement]  # exact: independent of bucket order
        if self.online and self.round > 0 and all(math.isfinite(m) and m >= 0 for m in movement):
            self.estimator.update([math.sqrt(m) for m in movement])
            new = self.estimator.weights()
            self.slots.scale_("g_local", self.weights[self.rank] / new[self.rank])
            self.weights = new
        self._movement = [[] for _ in range(self.world)]

    def add_movement(self, per_rank_sq: list[list[float]]) -> None:
        """per_rank_sq[r]: rank r's squared gradient movement of some parameters this round."""
        with self._lock:
            for parts, new in zip(self._movement, per_rank_sq):
                parts.extend(new)

    def end_round(self) -> None:
        self.round += 1
        self._round_open = False

    # --- checkpointing ------------------------------------------------------------------------------
    def _config(self) -> dict:
        return {"world": self.world, "ratio": self.ratio, "compressor": repr(self.compressor),
                "online": self.online, "init": self.init, "participation": self.participation, "seed": self.seed}

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: per-parameter g_i and g, round, weights."""
        return {"version": 1, "config": self._config(), "round": self.round, "weights": list(self.weights),
                "estimator": self.estimator.state_dict() if self.online else None,
                "movement": [list(m) for m in self._movement], "slots": self.slots.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("version") != 1:
            raise ValueError(f"unsupported EF21 state_dict version {sd.get('version')!r}")
        if sd["config"] != self._config():
            raise ValueError(f"EF21 state_dict was saved with config {sd['config']}, this state has {self._config()}")
        self.slots.load_state_dict(sd["slots"])
        self.round = int(sd["round"])
        self.weights = [float(w) for w in sd["weights"]]
        self._movement = [[float(v) for v in m] for m in sd["movement"]]
        if self.online:
            self.estimator.load_state_dict(sd["estimator"])
        self._round_open = False
