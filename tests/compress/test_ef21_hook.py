"""EF21 / EF21-W DDP hook across real gloo ranks on 127.0.0.1 (spawned; bounded by timeouts).

One spawn of 2 ranks runs every scenario of _ef21_workers.py; one spawn of 4 ranks repeats the
bitwise-identity checks."""

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import _ef21_workers as workers  # noqa: E402

from osmos.compress.ef21 import Quadratic, TopK, simulate  # noqa: E402



@pytest.fixture(scope="module")
def two_ranks():
    return workers.launch(2, ["identical", "ratio_one", "resume", "convex", "errors"], timeout=240)


@pytest.fixture(scope="module")
def four_ranks():
    return workers.launch(4, ["identical"], timeout=240)


def _assert_all_ranks_equal(per_rank):
    first = per_rank[0]
    for other in per_rank[1:]:
        for name, grads in first.items():
            assert grads.shape == other[name].shape
            assert torch.equal(grads, other[name]), f"{name}: ranks disagree"


def test_all_ranks_hold_identical_aggregated_gradients_2(two_ranks):
    results = two_ranks["identical"]
    _assert_all_ranks_equal(results)
    for name, grads in results[0].items():
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0, name


def test_all_ranks_hold_identical_aggregated_gradients_4(four_ranks):
    _assert_all_ranks_equal(four_ranks["identical"])


@pytest.mark.gpu
def test_nccl_ranks_agree_and_ratio_one_equals_allreduce():
    """The hook on CUDA tensors over NCCL (one rank per GPU, up to 2; one GPU still runs the CUDA
    compress / all_gather_into_tensor / accumulate path)."""
    world = min(2, torch.cuda.device_count())
    out = workers.launch(world, ["identical", "ratio_one"], timeout=240, backend="nccl")
    _assert_all_ranks_equal(out["identical"])
    for name, grads in out["identical"][0].items():
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0, name
    for ref, ef, efw in out["ratio_one"]:
        torch.testing.assert_close(ef, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(efw, ref, rtol=1e-5, atol=1e-6)


def test_ratio_one_equals_allreduce(two_ranks):
    for ref, ef, efw in two_ranks["ratio_one"]:
        torch.testing.assert_close(ef, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(efw, ref, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_resumes_identically(two_ranks):
    for uninterrupted, resumed in two_ranks["resume"]:
        assert torch.equal(uninterrupted, resumed)


def test_converges_on_convex_problem_with_theory_stepsize(two_ranks):
    """Old-theory (L_QM) stepsize; the hook's iterate also follows the float64 simulator's."""
    cfg = workers.CONVEX
    q = Quadratic.random(2, cfg["d"], seed=cfg["seed"], spread=4.0)
    sim = simulate(q, 2, "ef21", TopK(k=cfg["k"]), cfg["steps"], stepsize="qm", record_every=cfg["steps"])
    for start, end, x in two_ranks["convex"]:
        assert math.isfinite(end) and end < 1e-5 * start
        torch.testing.assert_close(x.double(), sim.x, rtol=0, atol=1e-4)


def test_bad_configurations_raise_before_communication(two_ranks):
    for rank, errors in enumerate(two_ranks["errors"]):
        assert errors["ratio0"].startswith("ValueError") and "ratio" in errors["ratio0"]
        assert errors["ratio2"].startswith("ValueError") and "(0, 1]" in errors["ratio2"]
        assert errors["weights_len"].startswith("ValueError") and "one entry per rank" in errors["weights_len"]
        assert errors["weights_neg"].startswith("ValueError") and "positive" in errors["weights_neg"]
        assert errors["compressor"].startswith("ValueError") and "compressor" in errors["compressor"]
        assert errors["dtype_register"].startswith("TypeError") and "float64" in errors["dtype_register"]
        assert "float64" in errors["dtype_hook"] and "dtype" in errors["dtype_hook"]
        assert errors["load_mismatch"].startswith("ValueError") and "config" in errors["load_mismatch"]
        if rank == 0:
            assert errors["not_member"] is None
            assert errors["group_mismatch"].startswith("ValueError") and "process group" in errors["group_mismatch"]
        else:
            assert errors["not_member"].startswith("ValueError") and "not a member" in errors["not_member"]
