"""`score_prompts` and `osmos replication score` on the shipped zoo model (a few denoiser calls)."""

import csv
import json

import pytest
import torch

from osmos.replication.cli import main
from osmos.replication.denoisers import load_pipeline
from osmos.replication.memorization import memorization_score, score_prompts

PROMPTS = ["a red circle", "a blue star on a white background", "a green square, sample 3"]
FAST = dict(steps=1, num_samples=2, num_inference_steps=10)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("shapes-unet")


def test_score_prompts_flags_at_a_threshold(pipe):
    free = score_prompts(pipe, PROMPTS, **FAST)
    assert free.threshold is None and free.flagged == [False] * 3 and len(free.scores) == 3
    assert free.denoiser_calls_per_prompt == 4 and free.guidance_scale == pipe.recipe.default_guidance == 2.0
    again = memorization_score(pipe, PROMPTS, steps=1, num_samples=2, num_inference_steps=10,
                               generator=torch.Generator().manual_seed(0))
    assert torch.allclose(torch.tensor(free.scores), again)  # same seed, same latents
    middle = sorted(free.scores)[1]
    flagged = score_prompts(pipe, PROMPTS, threshold=middle, **FAST)
    assert flagged.flagged == [s >= middle for s in free.scores] and sum(flagged.flagged) == 2
    assert flagged.threshold_source == "given"


def test_score_prompts_calibrates_on_known_prompts(pipe):
    calib = score_prompts(pipe, PROMPTS, calibration_prompts=PROMPTS[:2], quantile=1.0, **FAST)
    assert calib.threshold == pytest.approx(max(calib.scores[:2]), rel=1e-5)
    assert "2 calibration prompts" in calib.threshold_source
    with pytest.raises(ValueError, match="not both"):
        score_prompts(pipe, PROMPTS, threshold=1.0, calibration_prompts=PROMPTS)
    with pytest.raises(ValueError, match="quantile"):
        score_prompts(pipe, PROMPTS, quantile=0.0)
    with pytest.raises(ValueError, match="method"):
        score_prompts(pipe, PROMPTS, method="norm")
    with pytest.raises(ValueError, match="prompts"):
        score_prompts(pipe, [])


def test_cli_score_writes_csv_and_json(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# memorized?\n" + "\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "out"
    assert main(["replication", "score", "--model", "shapes-unet", "--prompts", str(prompts), "--out", str(out),
                 "--threshold", "0", "--steps", "1", "--samples", "1", "--num-inference-steps", "10",
                 "--quiet"]) == 0
    report = json.loads((out / "scores.json").read_text())
    assert [r["prompt"] for r in report["prompts"]] == PROMPTS
    assert all(r["flagged"] for r in report["prompts"]) and report["n_flagged"] == 3  # every score >= 0
    assert report["model"] == "shapes-unet" and report["method"] == "highpass"
    assert report["denoiser_calls_per_prompt"] == 2
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == PROMPTS and all(r["flagged"] == "1" for r in rows)
    assert "3 prompts scored" in capsys.readouterr().out


def test_load_pipeline_from_bare_weights_and_bad_specs(tmp_path, pipe):
    from safetensors.torch import save_file

    path = tmp_path / "copy.safetensors"
    save_file({k: v.contiguous() for k, v in pipe.unet.state_dict().items()}, str(path))
    loaded = load_pipeline(str(path))
    x = torch.randn(1, 3, 16, 16)
    states, mask = pipe.encode_prompt(["a red circle"])
    t = torch.tensor(500)
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, t, states, encoder_attention_mask=mask).sample,
                           pipe.unet(x, t, states, encoder_attention_mask=mask).sample)
    with pytest.raises(ValueError, match="zoo model name"):
        load_pipeline(str(tmp_path / "missing.safetensors"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(SystemExit, match="no prompts"):
        main(["replication", "score", "--model", "shapes-unet", "--prompts", str(empty), "--out", str(tmp_path)])
