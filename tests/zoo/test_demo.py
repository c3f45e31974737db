"""`make demo`'s zoo parts at minimal size (osmos.zoo.demo), and the tour's summary table."""

from pathlib import Path

import pytest
from PIL import Image

from osmos import tour
from osmos.zoo.demo import run_erase_demo, run_replication_demo


def test_erase_demo_removes_red_and_undoes_exactly(tmp_path):
    r = run_erase_demo(tmp_path, "red", seeds=(0,), num_inference_steps=10)
    # shapes-unet draws red reliably; after RECE the classifier (almost) never sees it
    assert r["target_rate_before"] >= 0.8
    assert r["target_rate_after"] <= r["chance"] + 1e-6  # float32 rate vs float64 chance
    # the 4 unrelated prompts keep their (shape, colour) accuracy within one image
    assert r["others_acc_after"] >= r["others_acc_before"] - 0.25
    assert r["undo_exact"] and r["layers"] > 0
    with Image.open(r["grid"]) as im:  # 2 rows (before, after) of 10 images, 16 px x 4 + 1 px padding
        assert im.size == (10 * 65 + 1, 2 * 65 + 1)


def test_erase_demo_uce_alone_edits_less_than_rece(tmp_path):
    """method="uce" runs UCE without RECE's epochs: an exact undo, and red no rarer than after RECE."""
    uce = run_erase_demo(tmp_path, "red", seeds=(0,), num_inference_steps=10, method="uce")
    rece = run_erase_demo(tmp_path, "red", seeds=(0,), num_inference_steps=10)
    assert uce["method"] == "UCE" and rece["method"] == "RECE" and uce["undo_exact"]
    assert uce["target_rate_after"] < uce["target_rate_before"]
    assert uce["target_rate_after"] >= rece["target_rate_after"]


def test_erase_demo_rejects_style_concepts_and_unknown_methods(tmp_path):
    with pytest.raises(ValueError, match="shape or a colour"):
        run_erase_demo(tmp_path, "striped")
    with pytest.raises(ValueError, match="method"):
        run_erase_demo(tmp_path, "red", method="esd")


def test_replication_demo_separates_memorized_captions(tmp_path):
    r = run_replication_demo(tmp_path, memorized=4, normal=4, samples=1, num_inference_steps=10, distractors=28)
    mem, norm = r["memorized"], r["normal"]
    assert r["images"] == 8 and r["reference"] == 32 + 28
    # the memorization score flags memorized captions above every calibration prompt, normal ones rarely
    assert mem["score_flagged"] > norm["score_flagged"]
    assert mem["score_mean"] > norm["score_mean"]
    # generations for memorized captions lie closer to the training set, mostly to their own image
    assert mem["top1_mean"] > norm["top1_mean"]
    assert mem["top1_is_own"] >= 0.5
    assert Path(r["grid"]).is_file() and Path(r["report"]).is_file()


def test_replication_demo_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match=">= 1"):
        run_replication_demo(tmp_path, memorized=0)
    with pytest.raises(ValueError, match="memorized 32 captions"):
        run_replication_demo(tmp_path, memorized=33)


def test_tour_summary_links_pngs_and_reports_failures(tmp_path, monkeypatch):
    png = tmp_path / "grid.png"
    png.write_bytes(b"")

    def part_ok(out: Path) -> dict:
        return {"part": "ok", "result": "fine", "pngs": [str(png)]}

    def part_broken(out: Path) -> dict:
        raise RuntimeError("boom")

    monkeypatch.setattr(tour, "PARTS", [part_ok, part_broken])
    with pytest.raises(SystemExit):
        tour.run(tmp_path)
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0] == "| part | result | PNG | time |"
    assert table[2].startswith("| ok | fine | [grid.png](grid.png) |")
    assert "FAILED: RuntimeError: boom" in table[3]
