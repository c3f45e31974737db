"""benchmarks/harmonica_eval.py: routers are saved as soon as they are trained and reload with
`--routers-from` to the same decisions (a run stopped during its evaluation keeps its training)."""

import importlib.util
import sys
from pathlib import Path

import torch

from osmos.accel.harmonica import Router
from osmos.accel.harmonica.pipeline import budget_router

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "harmonica_eval.py"
_spec = importlib.util.spec_from_file_location("harmonica_eval", _PATH)
E = sys.modules.setdefault("harmonica_eval", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(E)


def _record(router: Router) -> dict:
    return {"seconds": 1.0, "final_loss": 0.1, "cache_usage": router.cache_usage(0.1),
            "granularity": router.granularity, "probabilities": router.probabilities().tolist()}


def test_saved_routers_reload_with_the_same_masks_and_budget_rows(tmp_path):
    steps, units = 6, 4
    torch.manual_seed(0)
    unit = Router(steps, units, "DDIMScheduler", max_reuse_run=2)
    step = Router(steps, units, "DDIMScheduler", max_reuse_run=2, granularity="step")
    with torch.no_grad():
        unit.logits.copy_(torch.randn(steps, units) * 3)
        step.logits.copy_(torch.tensor([[5.0], [-4.0], [2.0], [-3.0], [-1.0], [4.0]]))
    info = {"max_reuse_run": 2, "harmonica b=0.002": _record(unit)}
    path = tmp_path / "harmonica_eval_6_x_routers.json"
    E.save_training(path, steps, info)  # first router trained: the file already holds it
    assert set(E.load_trained([path], steps, units, "DDIMScheduler")) == {"harmonica b=0.002"}
    info["harmonica step b=0.002"] = _record(step)
    E.save_training(path, steps, info)
    loaded = E.load_trained([path], steps, units, "DDIMScheduler")
    assert set(loaded) == {"harmonica b=0.002", "harmonica step b=0.002"}
    for name, original in [("harmonica b=0.002", unit), ("harmonica step b=0.002", step)]:
        router, rec = loaded[name]
        assert router.granularity == original.granularity and router.max_reuse_run == 2
        assert rec["loaded_from"] == str(path)
        assert torch.equal(router.compute_mask(0.1), original.compute_mask(0.1))
        for fraction, bound in [(0.5, 2), (0.4, 3)]:
            assert torch.equal(budget_router(router, fraction, bound).compute_mask(0.1),
                               budget_router(original, fraction, bound).compute_mask(0.1))
    assert E.load_trained([path], steps + 1, units, "DDIMScheduler") == {}  # another step count: not reused


def test_pareto_plot_has_an_mse_and_an_accuracy_panel(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    rows = [{"method": "none", "speedup": 1.0, "mse_vs_none": 0.0, "acc": 0.8},
            {"method": "fora-2", "speedup": 1.5, "mse_vs_none": 1e-2, "acc": 0.82},
            {"method": "harmonica@fora-2 K=2", "speedup": 1.45, "mse_vs_none": 3e-3, "acc": 0.74},
            {"method": "l2c@fora-2 K=2", "speedup": 1.49, "mse_vs_none": 9e-3, "acc": 0.76}]
    seen = {}
    monkeypatch.setattr(plt, "close", lambda fig: seen.setdefault("fig", fig))
    E.plot_pareto(rows, tmp_path / "p.png", "t")
    assert (tmp_path / "p.png").stat().st_size > 0
    mse_ax, acc_ax = seen["fig"].axes
    assert mse_ax.get_yscale() == "log" and acc_ax.get_ylabel() == "pair accuracy (classifier)"
    plotted = sorted(float(y) for c in acc_ax.collections for _, y in c.get_offsets())
    assert plotted == [0.74, 0.76, 0.82]  # every cached row, none only as the reference line
    assert [line.get_ydata()[0] for line in acc_ax.lines] == [0.8]


def test_classifier_labels_read_final_samples_as_shape_and_colour():
    """--select-labels: the labels of a final sample in [-1, 1] are the zoo classifier's (shape, colour)
    of the same image in [0, 1]."""
    import osmos.zoo

    clf = osmos.zoo.load("classifier")
    from osmos.zoo import data as D

    attrs = D.sample_attributes(6, torch.Generator().manual_seed(3))
    images = D.render(attrs, 16)
    labels = E.classifier_labels(clf)(images * 2 - 1)
    pred = clf.predict(images)
    assert labels.shape == (6, 2)
    assert torch.equal(labels[:, 0], pred["shape"]) and torch.equal(labels[:, 1], pred["colour"])
    assert (labels[:, 0] == attrs.shape).float().mean() >= 0.8  # the classifier reads fresh renders
