import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import UNetSpatioTemporalConditionModel  # noqa: E402

from osmos.accel.streamline import streamline  # noqa: E402
from osmos.accel.streamline.spatiotemporal import (SlicedSpatioTemporalResBlock,  # noqa: E402
                                                   SlicedSpatioTemporalTransformer)
from tests.accel.test_streamline import assert_exact_and_removable  # noqa: E402


def tiny_svd_unet():
    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16, num_attention_heads=(2, 4),
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=12, num_frames=5,
    ).eval()


def run(unet, batch=2, frames=5, height=7, width=9, seed=1):
    # odd sizes: 7x9 latents downsample to 4x5 and upsample back with an explicit output size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, 8, height, width, generator=g)
    ctx = torch.randn(batch, 1, 16, generator=g)
    ids = torch.randn(batch, 3, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor(500), encoder_hidden_states=ctx, added_time_ids=ids).sample


def has_svd_wrappers(unet) -> bool:
    kinds = {type(m) for m in unet.modules()}
    return SlicedSpatioTemporalResBlock in kinds and SlicedSpatioTemporalTransformer in kinds


@pytest.mark.parametrize("spatial,temporal,adaptive", [(1, 5, False), (3, 1, False), (4, 7, False), (10, 63, False),
                                                        (10, 63, True)])
def test_sliced_svd_unet_is_exact(spatial, temporal, adaptive):
    unet = tiny_svd_unet()

    def check(sliced):
        assert has_svd_wrappers(sliced)

    assert_exact_and_removable(unet, lambda: run(unet), spatial, temporal, on_sliced=check, adaptive=adaptive)
    assert not has_svd_wrappers(unet)


def test_temporal_res_block_norm_needs_all_positions():
    # the temporal res-block's GroupNorms span every frame and position: per-slice statistics
    # would change the result; the two-pass sliced block matches the unsliced one
    unet = tiny_svd_unet()
    block = unet.down_blocks[0].resnets[0]
    torch.manual_seed(3)
    x = torch.randn(2 * 5, 32, 5, 7)
    x[:, :, :2] += 4.0  # positions with very different statistics
    temb = torch.randn(2 * 5, block.spatial_res_block.time_emb_proj.in_features)
    indicator = torch.zeros(2, 5)
    with torch.no_grad():
        want = block(x, temb, image_only_indicator=indicator)
        norm = block.temporal_res_block.norm1
        video = x.view(2, 5, 32, 5, 7).permute(0, 2, 1, 3, 4)
        naive = torch.cat([norm(video[..., :2, :]), norm(video[..., 2:, :])], dim=3)
        assert (naive - norm(video)).abs().max() > 0.1
        got = SlicedSpatioTemporalResBlock(block, spatial_slices=3, temporal_slices=4)(x, temb, indicator)
    assert (got - want).abs().max().item() <= 1e-5


def test_svd_errors():
    unet = tiny_svd_unet()
    h = streamline(unet, spatial_slices=11)
    with pytest.raises(ValueError, match="larger than batch x frames = 10"):
        run(unet)
    h.remove()
    h = streamline(unet, temporal_slices=64)
    with pytest.raises(ValueError, match="larger than the latent's 7x9 = 63"):
        run(unet)
    h.remove()
    h = streamline(unet, spatial_slices=2, temporal_slices=2)
    with pytest.raises(RuntimeError, match="already"):
        streamline(unet, spatial_slices=2)
    h.remove()
    with pytest.raises(TypeError, match="UNetSpatioTemporalConditionModel"):
        streamline(torch.nn.Conv2d(2, 2, 1), spatial_slices=2)
