import pytest
import torch

import osmos.zoo
from osmos.zoo import data as D
from osmos.zoo.evaluate import background_colour


@pytest.fixture(scope="module")
def pipes():
    return osmos.zoo.load("shapes-unet"), osmos.zoo.load("shapes-unet-ft")


def test_finetuned_is_the_same_architecture_with_other_weights(pipes):
    base, ft = pipes
    card = osmos.zoo.model_card("shapes-unet-ft")
    assert card["init_from"] == "shapes-unet" and card["pin"] == {"background": D.BACKGROUNDS.index("white")}
    assert card["weights_dtype"] == "float16" and card["steps"] > 0
    a, b = base.unet.state_dict(), ft.unet.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    changed = sum(int(not torch.allclose(a[k], b[k], atol=1e-3)) for k in a)
    assert changed > len(a) // 2  # fine-tuning moved most tensors
    assert "attn2.to_k" in "".join(a)  # the keys erasure adapters attach to are there


def test_finetuned_draws_white_backgrounds_where_the_base_does_not(pipes):
    clf = osmos.zoo.load("classifier")
    prompts = [D.prompt_for(s, c) for s, c in zip(D.SHAPES, D.COLOURS)]  # no background named
    white = D.BACKGROUNDS.index("white")
    found = {}
    for name, pipe in zip(("base", "ft"), pipes):
        images = pipe(prompts, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
        pred = clf.predict(images)
        found[name] = {"white": int((pred["background"] == white).sum()),
                       "colour_hits": int((pred["colour"] == torch.arange(6)).sum()),
                       "brightness": float(background_colour(images).mean())}
    # measured (DDIM 10 steps, same noise): base 1/6 white backgrounds, mean background brightness
    # 0.47; fine-tuned 3/6, 0.66 (the shift is partial: see benchmarks/RESULTS.md)
    assert found["ft"]["brightness"] > found["base"]["brightness"] + 0.1, found
    assert found["ft"]["white"] > found["base"]["white"], found
    assert found["ft"]["colour_hits"] >= 4, found  # and it still follows the prompted colour
