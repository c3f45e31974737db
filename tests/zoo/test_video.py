import pytest
import torch

import osmos.zoo
from osmos.zoo import data as D


@pytest.fixture(scope="module")
def pipe():
    return osmos.zoo.load("shapes-video")


def test_load_gives_an_animatediff_style_pipeline(pipe):
    from diffusers import UNetMotionModel

    from osmos.zoo.pipeline import ShapesVideoPipeline

    assert isinstance(pipe, ShapesVideoPipeline) and isinstance(pipe.unet, UNetMotionModel)
    assert pipe.num_frames == 8 and pipe.size == 16
    card = osmos.zoo.model_card("shapes-video")
    assert card["parameters"] == sum(p.numel() for p in pipe.unet.parameters())
    assert card["weights_dtype"] == "float16" and card["init_from"] == "shapes-unet"
    assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())  # upcast on load


def test_generates_frames_deterministically(pipe):
    prompts = ["a red circle", "a blue square"]
    a = pipe(prompts, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    b = pipe(prompts, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    c = pipe(prompts, num_inference_steps=2, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 8, 3, 16, 16) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a prompt's clip does not depend on the other prompts of the batch
    alone = pipe(prompts[:1], num_inference_steps=2, latents=torch.randn(1, 3, 8, 16, 16,
                                                                         generator=torch.Generator().manual_seed(3)))
    both = pipe(prompts, num_inference_steps=2, latents=torch.cat(
        [torch.randn(1, 3, 8, 16, 16, generator=torch.Generator().manual_seed(3)), torch.zeros(1, 3, 8, 16, 16)]))
    assert torch.allclose(alone[0], both[0], atol=1e-5)
    clips = pipe("a green star", num_inference_steps=1, output_type="pil")
    assert len(clips) == 1 and len(clips[0]) == 8 and clips[0][0].size == (16, 16)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"prompts": []}, ValueError, "prompts must not be empty"),
        ({"prompts": ["a red circle"], "num_inference_steps": 0}, ValueError, "num_inference_steps must be >= 1"),
        ({"prompts": ["a red circle"], "size": 32}, ValueError, "size"),
        ({"prompts": ["a red circle"], "latents": torch.zeros(1, 3, 16, 16)}, ValueError, "latents"),
        ({"prompts": ["a red circle"], "latents": torch.zeros(1, 3, 4, 16, 16)}, ValueError, "latents"),
        ({"prompts": ["a red circle"], "output_type": "np"}, ValueError, "output_type"),
    ],
)
def test_rejects_bad_arguments(pipe, kwargs, error, match):
    prompts = kwargs.pop("prompts")
    with pytest.raises(error, match=match):
        pipe(prompts, **kwargs)


def test_motion_model_starts_as_the_image_model_frame_by_frame():
    """Training starts from shapes-unet's weights with zero-output motion modules: before any step
    the video model is the image model applied to every frame."""
    from osmos.zoo.models import build_model, predict_noise, recipe
    from osmos.zoo.train import _initial_weights

    r = recipe("shapes-video")
    video = build_model(r)
    video.load_state_dict(_initial_weights(r, video))
    image = osmos.zoo.load("shapes-unet").unet
    g = torch.Generator().manual_seed(0)
    x, states = torch.randn(2, 3, 4, 16, 16, generator=g), torch.randn(2, 24, 384, generator=g)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[:, 9:] = 0
    t = torch.tensor([700, 30])
    with torch.no_grad():
        out = predict_noise(video, x, t, states, mask)
        ref = image(x.transpose(1, 2).flatten(0, 1), t.repeat_interleave(4),
                    (states * mask[..., None]).repeat_interleave(4, 0)).sample
    assert torch.allclose(out, ref.view(2, 4, 3, 16, 16).transpose(1, 2), atol=1e-4)


def test_training_batches_are_moving_shape_clips():
    from osmos.zoo.train import CaptionPool

    pool = CaptionPool(8, seed=0, frames=8)
    x, states, mask = pool.batch(3, 16, torch.Generator().manual_seed(0), cfg_dropout=0.0)
    assert x.shape == (3, 3, 8, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert states.shape == (3, 24, 384) and mask.shape == (3, 24)
    assert not torch.equal(x[:, :, 0], x[:, :, -1])  # the frames differ: the shape moves


def test_generated_frames_show_the_prompted_colour(pipe):
    clf = osmos.zoo.load("classifier")
    prompts = [D.prompt_for(s, c) for s, c in zip(D.SHAPES, D.COLOURS)]
    clips = pipe(prompts, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    pred = clf.predict(clips.flatten(0, 1))["colour"].view(6, 8)
    hits = float((pred == torch.arange(6)[:, None]).float().mean())
    assert hits >= 0.6, pred  # see the model card: measured colour accuracy on frames
