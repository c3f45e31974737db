import pytest
import torch

from osmos.zoo.text import HIDDEN_SIZE, MAX_TOKENS, shared_encoder


@pytest.fixture(scope="module")
def enc():
    return shared_encoder()


def test_token_states_and_mask(enc):
    s, m = enc(["a red circle", "a picture of a dotted blue star on a white background"])
    assert s.shape == (2, MAX_TOKENS, HIDDEN_SIZE) and m.shape == (2, MAX_TOKENS)
    assert m[0].sum() == 5 and m[1].sum() > m[0].sum()  # [CLS] a red circle [SEP]
    assert torch.isfinite(s).all()


def test_deterministic_cached_and_prompt_dependent(enc):
    enc._cache.clear()  # an earlier test may have cached it from a larger batch (other bits, same values)
    a, _ = enc(["a red circle"])
    assert torch.equal(enc(["a red circle"])[0], a)  # from the cache
    enc._cache.clear()
    b, _ = enc(["a red circle"])
    assert torch.equal(a, b)
    c, _ = enc(["a blue circle"])
    assert not torch.allclose(a, c)
