"""Facilitated Transport: gamma from token-level similarity without padding, caching, rules."""

import pytest
import torch

from osmos.erase.spm import FacilitatedTransport, PromptEncoding, transformers_encoder
from osmos.erase.spm.transport import similarity_flattened, similarity_token_max, token_overlap
from spm_tiny import WordEncoder


class CountingEncoder:
    """PromptEncodings from WordEncoder: padding positions are non-content; counts calls."""

    def __init__(self, length=8):
        self.words = WordEncoder(16, length=length)
        self.calls = 0

    def __call__(self, prompts):
        self.calls += len(prompts)
        states = self.words(prompts)
        out = []
        for i, p in enumerate(prompts):
            n = len(p.split())
            ids = torch.tensor([self.words.ids(w) for w in p.split()] + [0] * (self.words.length - n))
            out.append(PromptEncoding(states[i], ids, torch.arange(self.words.length) < n))
        return out


def test_gamma_formula_and_overlap():
    enc = CountingEncoder()
    ft = FacilitatedTransport(enc, ["cat", "van gogh"], factor=1.0)
    g = ft.gammas(["a photo of a cat", "a painting by van gogh", "a red car"])
    assert g.shape == (3, 2)
    assert g[0, 0] == 1.0 and g[1, 1] == 1.0  # every concept token present
    p, c = enc(["a red car", "cat"])
    expected = max(similarity_token_max(p, c), token_overlap(p, c))
    assert g[2, 0] == pytest.approx(max(0.0, expected))
    assert g[2, 0] < 0.8 and g[0, 1] < 0.8


def test_factor_rule_and_clamping():
    enc = CountingEncoder()
    half = FacilitatedTransport(enc, ["cat"], factor=0.5).gammas(["cat"])
    assert half.item() == pytest.approx(0.5)
    big = FacilitatedTransport(enc, ["cat"], factor=10.0, use_token_overlap=False).gammas(["a photo of a dog"])
    assert 0.0 <= big.item() <= 1.0
    custom = FacilitatedTransport(enc, ["cat"], rule=lambda p, c: 0.25, use_token_overlap=False).gammas(["x"])
    assert custom.item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="rule must be"):
        FacilitatedTransport(enc, ["cat"], rule="cosine")


def test_each_prompt_is_encoded_once():
    enc = CountingEncoder()
    ft = FacilitatedTransport(enc, ["cat", "dog"])
    calls = enc.calls
    ft.gammas(["a cat", "a dog", "a cat"])
    ft.gammas(["a cat"])
    assert enc.calls == calls + 2


def test_padding_excluded_unlike_flattened_rule():
    """Short unrelated prompts share many padding positions; the flattened (reference) rule
    scores them as similar, the token-level rule does not."""
    enc = CountingEncoder(length=16)
    prompts = ["red car", "blue house", "green tree", "small boat"]
    concept = enc(["cat"])[0]
    encs = enc(prompts)
    flat = [similarity_flattened(p, concept) for p in encs]
    token = [similarity_token_max(p, concept) for p in encs]
    assert min(flat) > 0.7
    assert max(token) < 0.6


def test_transformers_encoder_marks_special_and_padding():
    from transformers import CLIPTextConfig, CLIPTextModel

    class Tok:  # minimal stand-in of a CLIP tokenizer: bos=1, eos=2, pad=2
        all_special_ids = [1, 2]
        model_max_length = 6

        def __call__(self, prompts, padding, max_length, truncation, return_tensors):
            ids, mask = [], []
            for p in prompts:
                body = [3 + (hash(w) % 50) for w in p.split()][: max_length - 2]
                row = [1, *body, 2]
                mask.append([1] * len(row) + [0] * (max_length - len(row)))
                ids.append(row + [2] * (max_length - len(row)))
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    model = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=8)).eval()
    encode = transformers_encoder(Tok(), model)
    (e,) = encode(["a cat"])
    assert e.states.shape == (6, 16)
    assert e.content.tolist() == [False, True, True, False, False, False]
    ft = FacilitatedTransport(encode, ["cat"])
    assert ft.gammas(["a cat"]).item() == 1.0


def test_overlap_ignore_ids_drop_stop_words():
    enc = CountingEncoder()
    plain = FacilitatedTransport(enc, ["a cat"], rule=lambda p, c: 0.0)
    assert plain.gammas(["a red car"]).item() == pytest.approx(0.5)
    ignoring = FacilitatedTransport(enc, ["a cat"], rule=lambda p, c: 0.0, overlap_ignore_ids=[enc.words.ids("a")])
    assert ignoring.gammas(["a red car"]).item() == 0.0
    assert ignoring.gammas(["a cat on a mat"]).item() == 1.0


def test_gamma_is_the_best_match_over_an_spms_wordings():
    enc = CountingEncoder()
    words = ["circle", "disc", "round shape"]
    many = FacilitatedTransport(enc, [words, "dog"], overlap_ignore_ids=[enc.words.ids(w) for w in ("a", "of")])
    prompts = ["a red circle", "a picture of a red disc", "a red round shape", "a green dog", "a blue square box"]
    g = many.gammas(prompts)
    assert g.shape == (5, 2)
    assert torch.allclose(g[:3, 0], torch.ones(3))  # every trained wording: full strength
    for k, p in enumerate(prompts):  # column i = the maximum of the single-wording transports
        singles = [FacilitatedTransport(enc, [w], overlap_ignore_ids=[enc.words.ids(w) for w in ("a", "of")]).gammas([p])[0, 0]
                   for w in words]
        assert g[k, 0] == pytest.approx(float(max(singles)))
    assert torch.equal(g[:, 1], FacilitatedTransport(enc, ["dog"]).gammas(prompts)[:, 0])  # a plain string as before
    assert g[4, 0] < 0.8 and g[3, 0] < 0.8  # unrelated prompts stay weak
    with pytest.raises(ValueError, match="at least one wording"):
        FacilitatedTransport(enc, [[]])


def test_for_spms_uses_the_stored_wordings():
    class Stub:
        def __init__(self, wordings):
            self.wordings = wordings

    enc = CountingEncoder()
    ft = FacilitatedTransport.for_spms(enc, [Stub(["red", "scarlet"]), Stub(["cat"])], factor=0.5)
    assert ft.concepts == [["red", "scarlet"], ["cat"]] and ft.factor == 0.5
    assert torch.allclose(ft.gammas(["a scarlet cat"]), torch.tensor([[0.5, 0.5]]))


def test_token_all_rule_needs_every_token_of_a_wording():
    from osmos.erase.spm.transport import similarity_token_all

    enc = CountingEncoder()
    full, partial, wording = enc(["a red round shape", "a red star shape", "round shape"])
    assert similarity_token_all(full, wording) == pytest.approx(1.0)
    assert similarity_token_max(partial, wording) > 0.5  # "shape" alone is close to the mean state
    assert similarity_token_all(partial, wording) < similarity_token_max(partial, wording) - 0.2
    c = wording.content_states()  # by hand: min over wording tokens of the best prompt-token cosine
    p = partial.content_states()
    expected = min(max(float(torch.nn.functional.cosine_similarity(q, w, dim=0)) for q in p) for w in c)
    assert similarity_token_all(partial, wording) == pytest.approx(expected, abs=1e-6)
    ft = FacilitatedTransport(enc, [["circle", "round shape"]], rule="token_all", use_token_overlap=False)
    assert ft.gammas(["a red round shape"]).item() == pytest.approx(1.0)
