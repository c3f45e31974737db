"""osmos.compress.rps: compress / to_dense / save / load / summary / RPSGradScaler."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from osmos.compress import rps
from osmos.compress.rps import RPSConv2d, RPSEmbedding, RPSGradScaler, RPSLinear


class Net(nn.Module):
    """Embedding + Conv2d + Linear: every supported layer type."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.conv = nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")
        self.fc1 = nn.Linear(4 * 4 * 4 + 6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, img, tok):
        h = F.relu(self.conv(img)).flatten(1)
        return self.fc2(F.relu(self.fc1(torch.cat([h, self.emb(tok)], 1))))


def _inputs(batch=5):
    return torch.randn(batch, 1, 4, 4), torch.randint(0, 10, (batch,))


def mlp(width=32):
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))


def test_compress_replaces_targets_and_shares_one_array():
    model = rps.compress(Net(), ratio=4, mapper="roast", seed=1)
    assert isinstance(model.emb, RPSEmbedding) and isinstance(model.conv, RPSConv2d)
    assert isinstance(model.fc1, RPSLinear) and isinstance(model.fc2, RPSLinear)
    n = 10 * 6 + 4 * 9 + 70 * 16 + 16 * 3
    assert model.rps_weight.numel() == -(-n // 4)
    names = [k for k, _ in model.named_parameters()]
    assert names.count("rps_weight") == 1 and not any(k.endswith(".weight") for k in names)
    assert list(model.state_dict()).count("rps_weight") == 1
    s = rps.summary(model)
    assert (s.dense_weights, s.shared, s.layers) == (n, -(-n // 4), 4)
    assert s.params_after < s.params_before and "roast" in str(s)


@pytest.mark.parametrize("mapper", ["stable", "roast", "hashednet"])
def test_layers_start_at_their_usual_scale(mapper):
    model = rps.compress(mlp(256), ratio=8, mapper=mapper, init_std=0.01)
    w = model[2].weight
    usual = 1 / (3 * 256) ** 0.5
    assert usual / 2**0.5 * 0.8 < float(w.detach().std()) < usual * 2**0.5 * 1.2


def test_stable_at_1x_is_exactly_the_dense_model():
    torch.manual_seed(0)
    dense = Net()
    model = rps.compress(copy.deepcopy(dense), ratio=1, mapper="stable", init="dense")
    img, tok = _inputs()
    assert torch.equal(model(img, tok), dense(img, tok))
    for name in ["emb", "conv", "fc1", "fc2"]:
        assert torch.equal(getattr(model, name).weight, getattr(dense, name).weight), name


def test_stable_at_1x_with_grad_scaling_trains_like_dense_sgd():
    torch.manual_seed(0)
    dense = mlp()
    model = rps.compress(copy.deepcopy(dense), ratio=1, mapper="stable", init="dense")
    scaler = RPSGradScaler(model)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.1)
    opt_r = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for _ in range(5):
        for net, opt in [(dense, opt_d), (model, opt_r)]:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            if net is model:
                scaler.step()
            opt.step()
    torch.testing.assert_close(model(x), dense(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mapper", ["stable", "roast", "hashednet"])
def test_compressed_model_trains(mapper):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = rps.compress(mlp(), ratio=8, mapper=mapper, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]


def test_save_load_and_to_dense_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = rps.compress(Net(), ratio=3, mapper="stable", seed=7)
    with torch.no_grad():
        model.rps_weight.add_(torch.randn_like(model.rps_weight))  # as if trained
    img, tok = _inputs()
    out = model(img, tok)
    path = str(tmp_path / "net.safetensors")
    rps.save(model, path)
    cfg = rps.read_config(path)
    assert cfg["mapper"] == "stable" and cfg["seed"] == 7 and cfg["layers"] == ["emb", "conv", "fc1", "fc2"]
    loaded = rps.load(Net(), path)
    assert torch.equal(loaded(img, tok), out)
    dense = rps.to_dense(copy.deepcopy(model))
    assert not any(isinstance(m, rps.RPSLayer) for m in dense.modules()) and not hasattr(dense, "rps_weight") and "rps_store" not in dense.__dict__
    assert type(dense.conv) is nn.Conv2d and dense.conv.padding_mode == "reflect"
    assert torch.equal(dense(img, tok), out)


def test_bare_layer_and_scaling_modes(tmp_path):
    model = rps.compress(nn.Linear(12, 5), ratio=2, mapper="hashednet")
    assert isinstance(model, nn.Sequential) and isinstance(model[0], RPSLinear)
    x = torch.randn(3, 12)
    path = str(tmp_path / "lin.safetensors")
    rps.save(model, path)
    assert torch.equal(rps.load(nn.Linear(12, 5), path)(x), model(x))
    s = model[0].scale
    for mode in rps.MODES:
        f = rps.scaling_factors(model, mode)
        assert f.shape == (30,) and bool((f > 0).all())
    # 60 weights over 30 entries (HashedNet: uneven counts), one scale s.
    counts = torch.bincount(rps_counts(model), minlength=30)
    expect = {"sq_sum_over_count": (counts * s) ** 2 / counts, "sum": counts * s, "mean": torch.full((30,), s),
              "l2": (counts * s * s) ** 0.5}
    for mode, value in expect.items():
        value = torch.where(counts > 0, value.double(), torch.ones(30, dtype=torch.float64))
        torch.testing.assert_close(rps.scaling_factors(model, mode).double(), value, rtol=1e-6, atol=0)


def rps_counts(model):
    from osmos.ops import rps_indices

    layer = rps.rps_layers(model)[0][1]
    return rps_indices(layer.config, layer.rows, layer.cols)[0].reshape(-1)


def test_compiled_forward_matches_eager():
    model = rps.compress(mlp(), ratio=4)
    x = torch.randn(4, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))


def test_bad_input():
    with pytest.raises(ValueError, match="ratio"):
        rps.compress(mlp(), ratio=0.5)
    with pytest.raises(ValueError, match="ratio"):
        rps.compress(mlp(), ratio=float("nan"))
    with pytest.raises(ValueError, match="no layer"):
        rps.compress(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), ratio=2)
    with pytest.raises(ValueError, match="mapper"):
        rps.compress(mlp(), ratio=2, mapper="pruning")
    with pytest.raises(TypeError, match="targets"):
        rps.compress(mlp(), ratio=2, targets=(nn.LayerNorm,))
    with pytest.raises(ValueError, match="already compressed"):
        rps.compress(rps.compress(mlp(), ratio=2), ratio=2)
    with pytest.raises(ValueError, match="not RPS-compressed"):
        rps.to_dense(mlp())
    with pytest.raises(ValueError, match="mode"):
        RPSGradScaler(rps.compress(mlp(), ratio=2), mode="bogus")
