import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import UNetMotionModel  # noqa: E402

from osmos.accel.streamline import streamline  # noqa: E402


def tiny_motion_unet():
    torch.manual_seed(0)
    return UNetMotionModel(
        block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        norm_num_groups=8, cross_attention_dim=16, num_attention_heads=2, motion_num_attention_heads=2,
        motion_max_seq_length=8, use_motion_mid_block=True,
    ).eval()


def run(unet, frames=4, batch=1, size=8, seed=1, t=500):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, size, size, generator=g)
    ctx = torch.randn(batch, 5, 16, generator=g).repeat_interleave(frames, dim=0)  # as AnimateDiffPipeline passes it
    with torch.no_grad():
        return unet(x, torch.tensor(t), encoder_hidden_states=ctx).sample


def assert_exact_and_removable(unet, call, spatial: int, temporal: int, on_sliced=None, adaptive: bool = False):
    """streamline(unet, spatial, temporal, adaptive=adaptive) changes call()'s output by at most
    1e-5, and remove() restores the original modules: the output is bitwise identical again.
    `on_sliced(unet)` runs while the UNet is streamlined (extra checks of its structure)."""
    want = call()
    handle = streamline(unet, spatial_slices=spatial, temporal_slices=temporal, adaptive=adaptive)
    assert handle.wrapped > 0
    if on_sliced is not None:
        on_sliced(unet)
    got = call()
    handle.remove()
    assert (got - want).abs().max().item() <= 1e-5
    assert handle.wrapped == 0 and not any("forward" in m.__dict__ for m in unet.modules())
    assert torch.equal(call(), want)


@pytest.mark.parametrize("spatial,temporal,adaptive", [(2, 1, False), (1, 5, False), (3, 7, False), (4, 64, False),
                                                        (4, 64, True), (3, 7, True)])
def test_sliced_unet_is_exact(spatial, temporal, adaptive):
    unet = tiny_motion_unet()
    assert_exact_and_removable(unet, lambda: run(unet), spatial, temporal, adaptive=adaptive)


def test_adaptive_slices_deep_levels_in_fewer_slices():
    # top level: 4 frames x 32 channels x 8x8 = 8192 elements per activation; down_blocks[1]'s
    # resnet sees 32 channels at 4x4 (2048: a quarter, 1 slice instead of 4), its motion module
    # 64 channels at 4x4 (4096: half, 4 spatial slices instead of 8)
    unet = tiny_motion_unet()
    handle = streamline(unet, spatial_slices=4, temporal_slices=8, adaptive=True)
    calls = {}

    def count(name):
        def hook(module, args, kwargs):
            calls[name] = calls.get(name, 0) + 1
        return hook

    spies = {"top resnet": unet.down_blocks[0].resnets[0].inner, "deep resnet": unet.down_blocks[1].resnets[0].inner,
             "top motion": unet.down_blocks[0].motion_modules[0].inner.proj_in,
             "deep motion": unet.down_blocks[1].motion_modules[0].inner.proj_in}
    hooks = [m.register_forward_pre_hook(count(k), with_kwargs=True) for k, m in spies.items()]
    run(unet)
    for h in hooks:
        h.remove()
    handle.remove()
    assert calls == {"top resnet": 4, "deep resnet": 1, "top motion": 8, "deep motion": 4}


def test_naive_spatial_slicing_of_motion_norm_would_be_wrong():
    # the defect the two-pass GroupNorm avoids: per-slice statistics change the result
    unet = tiny_motion_unet()
    mm = unet.down_blocks[0].motion_modules[0]
    x = torch.randn(2 * 4, 32, 6, 6)
    x[:, :, :3] += 3.0
    with torch.no_grad():
        want = mm(x, num_frames=4)
        naive_norm = torch.cat([mm.norm(x.view(2, 4, 32, 6, 6).permute(0, 2, 1, 3, 4)[..., :3, :]),
                                mm.norm(x.view(2, 4, 32, 6, 6).permute(0, 2, 1, 3, 4)[..., 3:, :])], dim=3)
        full_norm = mm.norm(x.view(2, 4, 32, 6, 6).permute(0, 2, 1, 3, 4))
        assert (naive_norm - full_norm).abs().max() > 0.1
        h = streamline(unet, temporal_slices=2)
        got = unet.down_blocks[0].motion_modules[0](x, num_frames=4)
        h.remove()
    assert (got - want).abs().max().item() <= 1e-5


def test_errors():
    unet = tiny_motion_unet()
    with pytest.raises(ValueError, match="spatial_slices"):
        streamline(unet, spatial_slices=0)
    with pytest.raises(TypeError, match="adaptive"):
        streamline(unet, spatial_slices=2, adaptive="yes")
    with pytest.raises(TypeError, match="UNetMotionModel"):
        streamline(torch.nn.Linear(2, 2), spatial_slices=2)
    h = streamline(unet, spatial_slices=2)
    with pytest.raises(RuntimeError, match="already"):
        streamline(unet, spatial_slices=2)
    h.remove()
    h = streamline(unet, spatial_slices=5)
    with pytest.raises(ValueError, match="larger than batch x frames"):
        run(unet)
    h.remove()
    h = streamline(unet, temporal_slices=65)
    with pytest.raises(ValueError, match="larger than the latent"):
        run(unet)
    h.remove()


def run_odd(unet):
    # odd, non-square latents (7x9 -> 4x5 -> upsampled back with an explicit size), batch 2
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 5, 7, 9, generator=g)
    ctx = torch.randn(2, 5, 16, generator=g).repeat_interleave(5, dim=0)
    with torch.no_grad():
        return unet(x, torch.tensor(500), encoder_hidden_states=ctx).sample


def test_sliced_unet_is_exact_at_odd_sizes():
    unet = tiny_motion_unet()
    assert_exact_and_removable(unet, lambda: run_odd(unet), 3, 10)


@pytest.mark.parametrize("frames,spatial,temporal", [(8, 8, 16), (12, 5, 7)])
def test_zoo_shapes_video_is_exact(frames, spatial, temporal):
    # the trained zoo model (3 levels, cross-attention in the two deeper ones, motion mid block),
    # one classifier-free-guidance step as its pipeline runs it, at and beyond its 8 training frames
    from osmos import zoo
    from osmos.zoo.models import predict_noise

    pipe = zoo.load("shapes-video")
    states, mask = pipe.encode_prompt(["", "a blue square"])
    x = torch.randn(2, 3, frames, 8, 8, generator=torch.Generator().manual_seed(3))

    def call():
        with torch.no_grad():
            return predict_noise(pipe.unet, x, torch.tensor(700), states, mask)

    assert_exact_and_removable(pipe.unet, call, spatial, temporal)


def full_res_shapes(unet, call):
    """Shapes of every tensor an aten op produces during call()."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    shapes.add(tuple(t.shape))
            return out

    with Record():
        call()
    return shapes


def test_upsampled_tensor_never_exists_whole():
    # operator grouping across up blocks: up_blocks[0]'s upsampler (64 channels at full
    # resolution) runs slice by slice inside up_blocks[1]'s first resnet loop
    unet = tiny_motion_unet()
    whole = (4, 64, 8, 8)  # batch x frames, up_blocks[0]'s channels, the full 8x8 resolution
    assert whole in full_res_shapes(unet, lambda: run(unet))
    handle = streamline(unet, spatial_slices=2, temporal_slices=4)
    assert whole not in full_res_shapes(unet, lambda: run(unet))
    handle.remove()


def test_streamline_with_rehash_matches_rehash_alone():
    from osmos.accel.streamline import RehashConfig, rehash

    config = RehashConfig(interval=2)
    unet = tiny_motion_unet()
    plain = rehash(unet, config)
    steps = [(1, 900), (2, 800), (3, 700)]  # (input seed, timestep): steps 0 and 2 are key steps
    want = [run(unet, seed=s, t=t) for s, t in steps]
    plain.remove()
    handle = streamline(unet, spatial_slices=2, temporal_slices=3, rehash=config)
    got = [run(unet, seed=s, t=t) for s, t in steps]
    assert handle.rehash.stats == {"computed": 2, "reused": 1}
    handle.remove()
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() <= 1e-5
