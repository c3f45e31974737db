"""Concept erasure on the embedded text-to-image model: SPM, UCE and RECE on osmos.zoo's shapes-unet.

For each erased concept (default: the shape "circle" and the colour "red") every method edits a
fresh copy of shapes-unet; the same prompts and seeds then go through the original and the
edited model (DDIM, CFG at the model card's 3.0) and the zoo classifier reads the images:

* target rate: fraction of images from prompts naming the concept in which the classifier sees
  it (chance is 1/6; lower = more erased), for three prompt sets:
    train     the training templates and wordings ("a red circle", "a picture of a red disc")
    tmpl      held-out templates with training wordings ("there is a red circle here")
    syn       training templates with held-out synonyms ("a red orb"), never used for tuning
* others: prompts naming every other value of the concept's kind, crossed with the other kind
  (for "circle": the 5 other shapes x 6 colours): pair accuracy (shape and colour both seen) and
  the mean absolute pixel change against the original model's image of the same prompt and seed
  (images in [0, 1]; for scale, the "seed gap": the mean change between consecutive images of
  that set in the original model, i.e. another seed or another prompt).
* attacks: the target rate of images generated from RECE's closed-form embedding
  c' = argmin_c sum_l ||W_l' c - W_l c_tar||^2 + lambda_reg ||c||^2 (the concept's token rows
  replaced by c'), for two choices of the edited model W' = W X:
    vs UCE   c' derived against the UCE edit: the embedding that RECE's first epoch finds and
             erases; every model is shown it (SPM without Facilitated Transport too, gamma = 1)
    re-derived  c' derived afresh against this model (for the original, c' ~ c_tar). Whenever
             X is invertible, c = X^-1 c_tar regenerates W c_tar exactly, so this attack can
             only fail through the ridge term; it is the closed-form worst case.

Methods: SPM (rank-1 adapters, ESD-form loss with surrogate "") without and with Latent
Anchoring (anchors: the other concepts' wordings and captions), the latter also with Facilitated
Transport (gamma from text similarity, factor 1, token_max rule), UCE (erase the
concept's training wordings, guide " ", preserve the other values' wordings), RECE (UCE, then
2 epochs erasing the derived embedding, lambda_reg 1e-3, the last epoch kept).

    PYTHONPATH=python python benchmarks/erasure_eval.py            # full: 18 min wall at load 8-11
    PYTHONPATH=python python benchmarks/erasure_eval.py --quick    # 89 s CPU (210 s wall at load 8)
Writes benchmarks/figures/erasure_<concept>.png (rows: methods; columns: the concept with each
value of the other kind, then unrelated prompts) and prints the markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import osmos.zoo
from osmos.erase.closed_form import cross_attention_kv, original_gram, regenerating_embeddings, rece_edit, uce_edit
from osmos.erase.spm import FacilitatedTransport, apply_spm, train_spm
from osmos.erase.text_encoding import token_rows
from osmos.erase.zoo import SPMTrainingPipe, anchor_prompts, concept_of, generate, training_wordings, \
    zoo_prompt_encoder, zoo_text_encoding
from osmos.zoo import data as D
from osmos.zoo.pipeline import save_grid

FIGURES = Path(__file__).resolve().parent / "figures"


@dataclass
class Settings:
    seeds: tuple[int, ...]
    variants: int  # training-template variants per (value, other value)
    other_values: int  # values of the other kind crossed with each "other" value
    steps: int  # DDIM steps
    spm_steps: int
    spm_lr: float = 1e-2
    la_strength: float = 100.0
    rece_epochs: int = 2
    lambda_reg: float = 1e-3
    attack_seeds: tuple[int, ...] = field(default=(0, 1, 2, 3, 4, 5))
    anchor_captions: bool = True


FULL = Settings(seeds=(0, 1), variants=3, other_values=6, steps=15, spm_steps=150)
QUICK = Settings(seeds=(0,), variants=1, other_values=2, steps=10, spm_steps=25, spm_lr=2e-2, attack_seeds=(0, 1, 2))


def caption(template: str, kind: str, word: str, other: str) -> str:
    shape, colour = (word, other) if kind == "shape" else (other, word)
    return template.format(style="", colour=colour, shape=shape, bg="")


def prompt_sets(kind: str, value: str, s: Settings) -> dict[str, list[str]]:
    """Prompts per evaluation set (see the module docstring)."""
    other_kind = "colour" if kind == "shape" else "shape"
    others = D.CONCEPTS[other_kind]
    train_words, held_words = D.WORDS[kind][value]
    other_word = lambda o: D.WORDS[other_kind][o][0][0]  # noqa: E731
    t_train, t_held = D.TEMPLATES["train"], D.TEMPLATES["heldout"]
    sets = {
        "train": [caption(t_train[k % len(t_train)], kind, train_words[k % len(train_words)], other_word(o))
                  for o in others for k in range(s.variants)],
        "tmpl": [caption(t_held[k], kind, train_words[0], other_word(o))
                 for o in others for k in range(min(s.variants, len(t_held)))],
        "syn": [caption(t_train[k % len(t_train)], kind, held_words[k % len(held_words)], other_word(o))
                for o in others for k in range(s.variants)],
    }
    rest = [v for v in D.CONCEPTS[kind] if v != value]
    sets["others"] = [caption(t_train[0], kind, D.WORDS[kind][v][0][0], other_word(o))
                      for v in rest for o in others[: s.other_values]]
    sets["others_labels"] = [(v, o) for v in rest for o in others[: s.other_values]]
    return sets


class Scorer:
    def __init__(self, kind: str, value: str, sets: dict, seeds: tuple[int, ...]):
        self.clf = osmos.zoo.load("classifier")
        self.kind, self.index = kind, D.CONCEPTS[kind].index(value)
        self.other_kind = "colour" if kind == "shape" else "shape"
        labels = [lab for lab in sets["others_labels"] for _ in seeds]
        self.others_kind = torch.tensor([D.CONCEPTS[kind].index(v) for v, _ in labels])
        self.others_other = torch.tensor([D.CONCEPTS[self.other_kind].index(o) for _, o in labels])

    def target_rate(self, images: torch.Tensor) -> float:
        return float((self.clf.predict(images)[self.kind] == self.index).float().mean())

    def pair_acc(self, images: torch.Tensor) -> float:
        pred = self.clf.predict(images)
        ok = (pred[self.kind] == self.others_kind) & (pred[self.other_kind] == self.others_other)
        return float(ok.float().mean())


def attack_states(pipe, encoding, gram, input_map, concept_words, value_word, lambda_reg):
    """Token states of the prompt `value_word` with its subject and later rows replaced by the
    closed-form regenerating embedding against the model with input map X (W' = W X)."""
    target = torch.cat(token_rows(encoding, concept_words, "all"))
    found = regenerating_embeddings(gram, input_map, target, lambda_reg)
    states, mask = pipe.encode_prompt([value_word])
    states = states.clone()
    first = token_rows(encoding, [value_word], "all")[0].shape[0]
    subject = int(encoding.subject_index([value_word])[0])
    states[0, subject : subject + first] = found[:first].to(states.dtype)
    return states, mask


def evaluate_concept(word: str, s: Settings, figures: Path, log) -> list[dict]:
    kind, value = concept_of(word)
    sets = prompt_sets(kind, value, s)
    pipe = osmos.zoo.load("shapes-unet")
    scorer = Scorer(kind, value, sets, s.seeds)
    encoding = zoo_text_encoding(pipe)
    layers = cross_attention_kv(pipe.unet)
    gram = original_gram(layers)
    words = training_wordings(kind, value)
    rest_words = [w for v in D.CONCEPTS[kind] if v != value for w in training_wordings(kind, v)]
    eye = torch.eye(gram.shape[0], dtype=torch.float64)

    def run_all(handle=None) -> dict[str, torch.Tensor]:
        return {name: generate(pipe, sets[name], s.seeds, num_inference_steps=s.steps, spm_handle=handle)
                for name in ("train", "tmpl", "syn", "others")}

    def attack(input_map=None, handle=None) -> float:
        st, m = uce_attack if input_map is None else \
            attack_states(pipe, encoding, gram, input_map, words, words[0], s.lambda_reg)
        return scorer.target_rate(generate(pipe, states=st, mask=m, seeds=s.attack_seeds, num_inference_steps=s.steps,
                                           spm_handle=handle))

    common = dict(erase=words, guide=" ", preserve=rest_words, lambda_=0.5, eta_e=1.0, eta_p=1.0, tokens="all")
    dry = uce_edit(pipe.unet, encoding, **common)  # only for the embedding that breaks UCE
    dry.undo(pipe.unet)
    uce_attack = attack_states(pipe, encoding, gram, dry.input_map, words, words[0], s.lambda_reg)

    rows, grid_rows = [], []
    t0 = time.perf_counter()
    base = run_all()
    base_attack = (attack(), attack(eye))
    seed_gap = float((base["others"][:-1] - base["others"][1:]).abs().mean()) if len(base["others"]) > 1 else 0.0

    def record(method: str, images: dict, seconds: float, attack_rates: tuple[float | None, float | None]):
        row = {"concept": word, "kind": kind, "method": method, "seconds": round(seconds, 1)}
        for name in ("train", "tmpl", "syn"):
            row[f"rate_{name}"] = scorer.target_rate(images[name])
        row["others_pair_acc"] = scorer.pair_acc(images["others"])
        row["others_pixel_change"] = float((images["others"] - base["others"]).abs().mean())
        row["attack_vs_uce"], row["attack_rederived"] = attack_rates
        row["seed_gap"] = seed_gap
        rows.append(row)
        log(json.dumps(row))
        n_other = len(D.CONCEPTS["colour" if kind == "shape" else "shape"])
        per = s.variants * len(s.seeds)
        firsts = images["others"][:: s.other_values * len(s.seeds)][:4]  # one image of each of 4 other values
        grid_rows.append(torch.cat([images["train"][::per][:n_other], firsts]))

    record("original", base, time.perf_counter() - t0, base_attack)

    # SPM without Latent Anchoring, then with it (alone and with Facilitated Transport)
    def train(la_strength: float):
        t0 = time.perf_counter()
        spm = train_spm(SPMTrainingPipe.of(pipe), value, surrogate="", steps=s.spm_steps, lr=s.spm_lr,
                        la_strength=la_strength, anchors=anchor_prompts(kind, value, s.anchor_captions) if la_strength else None,
                        anchors_per_step=4, sampling_steps=s.steps, seed=0, progress=False)
        return spm, time.perf_counter() - t0

    spm, train_s = train(0.0)
    with apply_spm(pipe.unet, [spm]) as handle:
        record("SPM, no LA", run_all(handle), train_s, (attack(handle=handle), None))
    spm, train_s = train(s.la_strength)
    with apply_spm(pipe.unet, [spm]) as handle:
        record(f"SPM, LA {s.la_strength:g}", run_all(handle), train_s, (attack(handle=handle), None))
    ft = FacilitatedTransport(zoo_prompt_encoder(pipe), [value], factor=1.0,
                              overlap_ignore_ids=pipe.text_encoder.tokenizer.convert_tokens_to_ids(["a", "an", "of"]))
    with apply_spm(pipe.unet, [spm], transport=ft) as handle:
        record(f"SPM, LA {s.la_strength:g}, FT", run_all(handle), train_s, (None, None))

    # UCE and RECE
    t0 = time.perf_counter()
    edit = uce_edit(pipe.unet, encoding, **common)
    uce_s = time.perf_counter() - t0
    record("UCE", run_all(), uce_s, (attack(), attack(edit.input_map)))
    edit.undo(pipe.unet)
    t0 = time.perf_counter()
    edit = rece_edit(pipe.unet, encoding, **common, epochs=s.rece_epochs, lambda_reg=s.lambda_reg)
    rece_s = time.perf_counter() - t0
    record(f"RECE ({s.rece_epochs} ep)", run_all(), rece_s, (attack(), attack(edit.input_map)))
    edit.undo(pipe.unet)

    figures.mkdir(parents=True, exist_ok=True)
    grid = torch.cat(grid_rows)
    save_grid(grid, figures / f"erasure_{value}.png", nrow=len(grid_rows[0]), scale=4)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| concept | method | target rate: train wordings | held-out templates | held-out synonyms | "
           "attack: c' vs UCE | attack: c' re-derived | others: pair acc | others: pixel change (seed gap) | "
           "edit / train time (s) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    rate = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        attack = f"{rate(r['attack_vs_uce'])} | {rate(r['attack_rederived'])}"
        out.append(f"| {r['concept']} ({r['kind']}) | {r['method']} | {r['rate_train']:.2f} | {r['rate_tmpl']:.2f} | "
                   f"{r['rate_syn']:.2f} | {attack} | {r['others_pair_acc']:.2f} | "
                   f"{r['others_pixel_change']:.3f} ({r['seed_gap']:.3f}) | {r['seconds']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 1 wording, 25 SPM steps, 10 DDIM steps (about 90 s of CPU time)")
    parser.add_argument("--la-strength", type=float, default=None, help="SPM Latent Anchoring weight (100)")
    parser.add_argument("--anchors", choices=("words+captions", "words"), default="words+captions",
                        help="SPM anchor vocabulary: other concepts' wordings, with or without captions")
    parser.add_argument("--concepts", nargs="+", default=["circle", "red"], help="concept words to erase")
    parser.add_argument("--figures", default=str(FIGURES), help="folder for the PNG grids")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s = QUICK if args.quick else FULL
    if args.la_strength is not None:
        s = dataclasses.replace(s, la_strength=args.la_strength)
    s = dataclasses.replace(s, anchor_captions=args.anchors == "words+captions")
    t0 = time.perf_counter()
    rows = []
    for word in args.concepts:
        rows += evaluate_concept(word, s, Path(args.figures), log=lambda m: print(m, flush=True))
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; settings {s}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
