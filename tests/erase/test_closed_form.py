"""UCE / RECE closed-form editing: the math on random matrices, then tiny SD 1.5 / 2.1 / XL UNets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import uce_tiny_sd as tiny
from osmos.erase.closed_form import (
    apply_update,
    cross_attention_kv,
    original_gram,
    rece_edit,
    regenerating_embeddings,
    uce_edit,
    uce_update,
)
from osmos.erase.closed_form_reference import reference_rece_embedding, reference_uce
from osmos.erase.text_encoding import hf_text_encoding, sdxl_text_encoding, token_rows

D = 24
OUTS = (16, 40, 24)


def random_layers(outs=OUTS, dim=D) -> dict[str, nn.Linear]:
    layers = {}
    for i, out in enumerate(outs):
        layer = nn.Linear(dim, out, bias=False)
        nn.init.normal_(layer.weight, std=0.2)
        layers[f"l{i}"] = layer
    return layers


def weights(layers) -> list[torch.Tensor]:
    return [l.weight.detach().to(torch.float64).clone() for l in layers.values()]


def concepts(n, dim=D, scale=3.0):
    return scale * torch.randn(n, dim, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# The closed forms on random matrices


@pytest.mark.parametrize("n_erase,n_preserve", [(1, 0), (3, 5), (6, 40)])
def test_uce_satisfies_normal_equations(n_erase, n_preserve):
    lam, eta_e, eta_p = 0.5, 1.3, 0.7
    c_e, c_g = concepts(n_erase), concepts(n_erase)
    c_p = concepts(n_preserve) if n_preserve else None
    u, v = uce_update(c_e, c_g, c_p, lam, eta_e, eta_p)
    for w in [torch.randn(out, D, dtype=torch.float64) for out in OUTS]:
        w_new = w + (w @ u) @ v.T
        # gradient / 2 of eta_e sum||W c_i - W_old c_g||^2 + eta_p sum||(W - W_old) c_j||^2 + lam||W - W_old||^2
        grad = eta_e * (w_new @ c_e.T - w @ c_g.T) @ c_e + lam * (w_new - w)
        if c_p is not None:
            grad += eta_p * (w_new - w) @ c_p.T @ c_p
        scale = eta_e * (w @ c_g.T).abs().max() * c_e.abs().max() * n_erase
        assert grad.abs().max() / scale < 1e-12


def test_uce_matches_reference_formula():
    layers = random_layers()
    w0 = weights(layers)
    c_e, c_g, c_p = concepts(4), concepts(4), concepts(7)
    expected = reference_uce(w0, c_e, c_g, c_p, 0.5, 1.0, 0.8, dtype=torch.float64)
    u, v = uce_update(c_e, c_g, c_p, 0.5, 1.0, 0.8)
    for w, e in zip(w0, expected):
        torch.testing.assert_close(w + (w @ u) @ v.T, e, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("rank", [4, 20])  # low-rank product (4 <= D/2) and dense map (20 > D/2)
def test_apply_update_matches_reference(rank):
    layers = random_layers()
    w0 = weights(layers)
    c_e, c_g, c_p = concepts(rank), concepts(rank), concepts(3)
    apply_update(layers, *uce_update(c_e, c_g, c_p, 0.5))
    for w, e in zip(weights(layers), reference_uce(w0, c_e, c_g, c_p, 0.5, dtype=torch.float64)):
        torch.testing.assert_close(w, e, rtol=0, atol=1e-6 * e.abs().max().item())  # one float32 rounding


def test_zero_erase_weight_leaves_weights_bitwise():
    layers = random_layers()
    before = [l.weight.detach().clone() for l in layers.values()]
    u, v = uce_update(concepts(3), concepts(3), None, 0.5, eta_e=0.0)
    apply_update(layers, u, v)
    for b, l in zip(before, layers.values()):
        assert torch.equal(b, l.weight)


def test_small_lambda_maps_erased_onto_guide():
    c_e, c_g = concepts(5), concepts(5)
    u, v = uce_update(c_e, c_g, None, lambda_=1e-8)
    for w in [torch.randn(out, D, dtype=torch.float64) for out in OUTS]:
        w_new = w + (w @ u) @ v.T
        target = w @ c_g.T
        assert ((w_new @ c_e.T - target).norm() / target.norm()) < 1e-6
        # ... while moving a large lambda barely does
    u, v = uce_update(c_e, c_g, None, lambda_=1e6)
    assert (u @ v.T).abs().max() < 1e-3


def test_preserved_concepts_move_less_than_erased():
    c_e, c_g, c_p = concepts(2), concepts(2), concepts(6)
    u, v = uce_update(c_e, c_g, c_p, 0.5, 1.0, 1.0)
    w = torch.randn(40, D, dtype=torch.float64)
    delta = (w @ u) @ v.T

    def moved(c):
        return ((delta @ c.T).norm(dim=0) / (w @ c.T).norm(dim=0)).max()

    assert moved(c_p) < 0.1 * moved(c_e)
    # and without the preserve term the same prompts move more
    u0, v0 = uce_update(c_e, c_g, None, 0.5)
    assert ((w @ u0) @ v0.T @ c_p.T).norm() > 2 * (delta @ c_p.T).norm()


def test_singular_system_is_a_clear_error():
    with pytest.raises(ValueError, match="positive definite"):
        uce_update(concepts(2), concepts(2), None, lambda_=0.0)


def test_rece_embedding_regenerates_concept_better():
    layers = random_layers()
    w0 = weights(layers)
    gram = original_gram(layers)
    c_tar, c_g = concepts(3), concepts(3)
    u, v = uce_update(c_tar, c_g, None, 0.1)
    apply_update(layers, u, v)
    input_map = torch.eye(D, dtype=torch.float64) + u @ v.T
    w1 = weights(layers)
    lam_reg = 1e-3
    found = regenerating_embeddings(gram, input_map, c_tar, lam_reg)

    def objective(c):  # what c' minimises, on the actual edited weights
        return sum(((wn @ c.T - w @ c_tar.T) ** 2).sum() for w, wn in zip(w0, w1)) + lam_reg * (c**2).sum()

    assert objective(found) < 0.1 * objective(c_tar)
    # the same as the formula evaluated directly on the stored (float32-rounded) weights
    direct = reference_rece_embedding(w0, w1, c_tar, lam_reg, dtype=torch.float64)
    torch.testing.assert_close(found, direct, rtol=1e-4, atol=1e-4 * direct.abs().max().item())
    # it is a minimum: the gradient of the objective (exact composite map) vanishes
    edited = [w @ input_map for w in w0]
    grad = sum(wn.T @ (wn @ found.T - w @ c_tar.T) for w, wn in zip(w0, edited)) + lam_reg * found.T
    assert grad.abs().max() < 1e-8 * sum(w.norm() ** 2 for w in w0) * c_tar.abs().max()


def test_rece_embedding_needs_positive_regulariser():
    with pytest.raises(ValueError, match="lambda_reg"):
        regenerating_embeddings(torch.eye(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64), concepts(1), 0.0)


# ---------------------------------------------------------------------------------------------
# Tiny diffusers UNets shaped like SD 1.5 / SD 2.1 / SDXL, with tiny CLIP encoders


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    tok = tiny.clip_tokenizer(tmp_path_factory.mktemp("tok"))
    te1 = tiny.clip_text_encoder(tok, seed=1)
    te2 = tiny.clip_text_encoder(tok, seed=2, with_projection=True)
    return {"sd15": hf_text_encoding(tok, te1), "sd21": hf_text_encoding(tok, te1),
            "sdxl": sdxl_text_encoding(tok, tok, te1, te2)}


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, saved):
    now = model.state_dict()
    assert all(torch.equal(now[k], saved[k]) for k in saved)


def kv_outputs(model, states):
    return {n: l(states.to(l.weight.dtype)) for n, l in cross_attention_kv(model).items()}


@pytest.mark.parametrize("kind", ["sd15", "sd21", "sdxl"])
@pytest.mark.parametrize("tokens", ["all", "last_subject"])
def test_uce_end_to_end(kind, tokens, encoders):
    enc = encoders[kind]
    model = tiny.unet(kind)
    saved = state(model)
    n_kv = 2 * sum(1 for _, m in model.named_modules() if getattr(m, "is_cross_attention", False))
    erase, guide, preserve = ["cat", "red dog"], " ", ["house", "blue"]
    rows = {p: token_rows(enc, [p], tokens)[0].to(torch.float32) for p in erase + [guide] + preserve}
    before = {p: kv_outputs(model, r) for p, r in rows.items()}
    edit = uce_edit(model, enc, erase=erase, guide=guide, preserve=preserve, lambda_=1e-4, tokens=tokens)
    assert len(edit.layer_names) == n_kv > 0 and edit.method == "uce"
    after = {p: kv_outputs(model, r) for p, r in rows.items()}
    for name in edit.layer_names:
        for p in erase:  # erased concept tokens now give the guide's keys / values
            n = min(rows[p].shape[0], rows[guide].shape[0])
            target = before[guide][name][:n]
            assert (after[p][name][:n] - target).norm() < 0.02 * target.norm()
        for p in preserve:  # preserved ones keep theirs closely
            assert (after[p][name] - before[p][name]).norm() < 0.1 * before[p][name].norm()
    out = tiny.denoise_once(model, enc(["cat"])[0])
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    edit.undo(model)
    assert_same_state(model, saved)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_rece_end_to_end_keeps_best_epoch(kind, encoders):
    enc = encoders[kind]
    model = tiny.unet(kind)
    saved = state(model)
    scores = iter([0.0, 5.0, 1.0])  # epoch 1 is best
    seen = []

    def validate(m):
        seen.append(m is model)
        return next(scores)

    edit = rece_edit(model, enc, erase=["cat"], epochs=2, lambda_reg=1e-2, validate=validate)
    assert seen == [True] * 3 and edit.epoch_scores == [0.0, 5.0, 1.0] and edit.best_epoch == 1
    assert len(edit.derived) == 2
    kept = state(model)
    edit.undo(model)
    assert_same_state(model, saved)
    again = rece_edit(model, enc, erase=["cat"], epochs=1, lambda_reg=1e-2)
    assert again.best_epoch == 1 and again.epoch_scores == []
    assert_same_state(model, kept)  # the kept weights are exactly those after epoch 1


def test_rece_epochs_erase_the_regenerating_embedding(encoders):
    enc = encoders["sd15"]
    model = tiny.unet("sd15")
    layers = cross_attention_kv(model)
    original = weights(layers)
    target = token_rows(enc, ["cat"], "all")[0]

    def regeneration_error(c):  # how well c brings back the concept's original keys / values
        return sum(((l.weight.double() @ c.T - w @ target.T) ** 2).sum() for w, l in zip(original, layers.values()))

    edit = rece_edit(model, enc, erase="cat", epochs=1, lambda_reg=1e-3)
    found = edit.derived[0]
    after_rece = regeneration_error(found)
    edit.undo(model)
    uce_edit(model, enc, erase="cat")
    after_uce = regeneration_error(found)
    assert after_uce < 0.5 * regeneration_error(target)  # in the UCE model c' regenerates the concept better than c
    assert after_rece > 2 * after_uce  # and the RECE epoch took that away


def test_errors(encoders):
    enc = encoders["sd15"]
    model = tiny.unet("sd15")
    with pytest.raises(ValueError, match="erase"):
        uce_edit(model, enc, erase=[])
    with pytest.raises(ValueError, match="tokens"):
        uce_edit(model, enc, erase="cat", tokens="first")
    with pytest.raises(ValueError, match="no cross-attention"):
        uce_edit(nn.Sequential(nn.Linear(32, 32)), enc, erase="cat")
    with pytest.raises(ValueError, match="32-d"):  # the SDXL encoder's 64-d states on a 32-d UNet
        uce_edit(model, encoders["sdxl"], erase="cat")
    with pytest.raises(ValueError, match="one per erased"):
        uce_edit(model, enc, erase=["cat", "dog"], guide=["a", "b", "c"])
    with pytest.raises(TypeError, match="TextEncoding"):
        uce_edit(model, lambda p: enc(p), erase="cat")
    with pytest.raises(ValueError, match="epochs"):
        rece_edit(model, enc, erase="cat", epochs=-1)


def test_half_precision_weights_edit_and_undo():
    layers = {n: l.to(torch.float16) for n, l in random_layers().items()}
    w0 = [l.weight.detach().clone() for l in layers.values()]
    c_e, c_g = concepts(3), concepts(3)
    apply_update(layers, *uce_update(c_e, c_g, None, 0.5))
    expected = reference_uce([w.double() for w in w0], c_e, c_g, None, 0.5, dtype=torch.float64)
    for l, e in zip(layers.values(), expected):
        assert l.weight.dtype == torch.float16
        torch.testing.assert_close(l.weight.double(), e, rtol=0, atol=2e-3 * e.abs().max().item())


def test_bert_like_encoder_masks_padding(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "cat", "dog", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(words))
    tok = BertTokenizer(str(tmp_path / "vocab.txt"), model_max_length=10)
    bert = BertModel(BertConfig(vocab_size=len(words), hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=16, max_position_embeddings=10)).eval()
    enc = hf_text_encoding(tok, bert, attend_padding=False)
    states, mask = enc(["a red cat", "dogs"])
    assert mask.sum(dim=1).tolist() == [5, 4]  # [CLS] a red cat [SEP]; [CLS] dog ##s [SEP]
    assert enc.subject_index(["a red cat", "dogs"]).tolist() == [3, 2]
    rows = token_rows(enc, ["a red cat", "dogs"], "all")
    assert [r.shape[0] for r in rows] == [2, 2]  # subject word piece and [SEP]; padding excluded
    torch.testing.assert_close(rows[0], states[0, 3:5].double())
    last = token_rows(enc, ["dogs"], "last_subject")[0]
    torch.testing.assert_close(last, states[1, 2:3].double())


def test_stacking_in_several_blocks_gives_the_same_result(monkeypatch):
    from osmos.erase import closed_form

    c_e, c_g = concepts(3), concepts(3)
    u, v = uce_update(c_e, c_g, None, 0.5)
    one, many = random_layers(), random_layers()
    for a, b in zip(one.values(), many.values()):
        b.weight.data.copy_(a.weight.data)
    gram_one = original_gram(one)
    apply_update(one, u, v)
    monkeypatch.setattr(closed_form, "_STACK_ELEMENTS", 40 * D)  # each layer alone (outs 16, 40, 24)
    assert [len(b) for b in closed_form._stacked_blocks(many)] == [1, 1, 1]
    torch.testing.assert_close(original_gram(many), gram_one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gram_one, sum(w.T @ w for w in weights(many)), rtol=1e-12, atol=1e-12)
    apply_update(many, u, v)
    for a, b in zip(one.values(), many.values()):
        torch.testing.assert_close(a.weight, b.weight, rtol=2e-7, atol=0)  # one float32 rounding at most


@pytest.mark.parametrize("keep_limit", [None, 1])
def test_stacked_weights_round_once_across_updates(monkeypatch, keep_limit):
    """RECE's epochs update a kept float64 copy: after two updates the weights are
    round(W (I + U1 V1^T)(I + U2 V2^T)), one rounding; without the kept copy (over the memory
    limit) each update restacks the rounded weights, still within a few float32 roundings."""
    from osmos.erase import closed_form

    if keep_limit is not None:
        monkeypatch.setattr(closed_form, "_KEEP_ELEMENTS", keep_limit)
    layers = random_layers()
    w0 = weights(layers)
    stacked = closed_form.StackedWeights(layers)
    assert stacked.keep is (keep_limit is None)
    torch.testing.assert_close(stacked.gram(), sum(w.T @ w for w in w0), rtol=1e-12, atol=1e-12)
    (u1, v1), (u2, v2) = uce_update(concepts(3), concepts(3), None, 0.5), uce_update(concepts(2), concepts(2), None, 0.5)
    stacked.update(u1, v1)
    stacked.update(u2, v2)
    x = (torch.eye(D, dtype=torch.float64) + u1 @ v1.T) @ (torch.eye(D, dtype=torch.float64) + u2 @ v2.T)
    for w, layer in zip(w0, layers.values()):
        exact = w @ x
        ulp = exact.abs().max().item() * 2.0 ** -24
        err = (layer.weight.double() - exact).abs().max().item()
        assert err <= (1.01 * ulp if keep_limit is None else 8 * ulp)
        if keep_limit is None:  # exactly the float64 result rounded once
            assert torch.equal(layer.weight.detach(), exact.float())
