"""Concept erasure on the embedded text-to-image world (osmos.zoo): the glue that lets SPM, UCE
and RECE run on a zoo ``ShapesPipeline`` exactly as on a diffusers Stable Diffusion pipeline.

* :func:`zoo_text_encoding`   the MiniLM encoder as UCE / RECE see it (masked token states)
* :func:`zoo_prompt_encoder`  the same encoder as Facilitated Transport sees it
* :func:`zoo_transport`       Facilitated Transport over SPMs' stored wordings on a zoo model
* :class:`SPMTrainingPipe`    what ``train_spm`` needs (states + attention mask, latent shape)
* :func:`concept_of`          which concept kind ("shape", "colour", ...) a word names
* :func:`anchor_prompts`      the vocabulary of other concepts, for Latent Anchoring
* :func:`validation_prompts`  training-vocabulary captions outside the training targets, for
                               choosing among SPM training draws (train_spm_selected)
* :func:`validation_check`    the classifier's rate of the concept on them (optionally plus the other
                               values' accuracy drop): train_spm_selected's validate
* :func:`generate`            seeded images from prompts or from raw token states, optionally
                               with SPMs attached (per-prompt gammas under classifier-free guidance)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from osmos.erase.spm.transport import FacilitatedTransport, PromptEncoding
from osmos.erase.text_encoding import TextEncoding
from osmos.zoo import data as D


def zoo_text_encoding(pipe) -> TextEncoding:
    """The zoo pipeline's text encoder for the closed-form edits: states [B, T, 384] and the
    attention mask (the zoo UNets attend only real tokens), subject = the last word piece."""
    encoder = pipe.text_encoder

    def encode(prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        states, mask = encoder(list(prompts))
        return states, mask.bool()

    def subject_index(prompts: Sequence[str]) -> Tensor:
        _, mask = encoder(list(prompts))  # [CLS] w_1 .. w_n [SEP]: the last word piece is at count - 2
        return (mask.sum(1) - 2).clamp(min=0).to(torch.int64)

    return TextEncoding(encode, subject_index)


def zoo_prompt_encoder(pipe):
    """An Encoder for FacilitatedTransport: the zoo's states, with [CLS] / [SEP] / padding marked
    non-content."""
    encoder = pipe.text_encoder
    special = torch.tensor(sorted(set(encoder.tokenizer.all_special_ids)))

    def encode(prompts: Sequence[str]) -> list[PromptEncoding]:
        states, mask = encoder(list(prompts))
        ids = encoder.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=encoder.max_tokens,
                                return_tensors="pt")["input_ids"]
        content = mask.bool().cpu() & ~torch.isin(ids, special)
        return [PromptEncoding(states[i].cpu(), ids[i], content[i]) for i in range(len(prompts))]

    return encode


STOP_WORDS = ("a", "an", "of")  # left out of Facilitated Transport's token overlap ("a red square" vs "a red")


def zoo_transport(pipe, spms: Sequence, factor: float = 1.0, rule: str = "token_max") -> FacilitatedTransport:
    """Facilitated Transport on a zoo model over each SPM's wordings (`SPM.wordings`), with the
    stop words STOP_WORDS left out of the token-overlap term."""
    ignore = pipe.text_encoder.tokenizer.convert_tokens_to_ids(list(STOP_WORDS))
    return FacilitatedTransport.for_spms(zoo_prompt_encoder(pipe), spms, factor=factor, rule=rule,
                                         overlap_ignore_ids=ignore)


@dataclass
class SPMTrainingPipe:
    """A zoo pipeline as ``train_spm`` sees it: encode_prompt gives the states and, as the UNet's
    ``encoder_attention_mask``, the padding mask; latents are the [3, S, S] images themselves."""

    unet: torch.nn.Module
    scheduler: object
    text_encoder: object
    latent_shape: tuple[int, int, int]

    @classmethod
    def of(cls, pipe) -> "SPMTrainingPipe":
        from osmos.zoo.models import build_scheduler

        return cls(pipe.unet, build_scheduler(pipe.recipe, "ddim"), pipe.text_encoder, (3, pipe.size, pipe.size))

    def encode_prompt(self, prompts: Sequence[str]) -> tuple[Tensor, dict]:
        states, mask = self.text_encoder(list(prompts))
        return states, {"encoder_attention_mask": mask}


def concept_of(word: str) -> tuple[str, str]:
    """(kind, value) of a concept word of the shapes world, e.g. "disc" -> ("shape", "circle").
    Both training wordings and held-out paraphrases are recognised; ValueError otherwise."""
    text = word.strip().lower()
    for kind, values in D.WORDS.items():
        for value, (train, heldout) in values.items():
            if text == value or text in train or text in heldout:
                return kind, value
    known = ", ".join(v for values in D.CONCEPTS.values() for v in values)
    raise ValueError(f"{word!r} is not a concept of the shapes world (known: {known})")


def training_wordings(kind: str, value: str) -> list[str]:
    """The wordings of a concept value that zoo models are trained on ("circle", "disc", ...)."""
    return list(D.WORDS[kind][value][0])


def other_kind_of(kind: str) -> str:
    """The main kind named beside a concept of `kind` in captions: colour for shape / style /
    background concepts, shape for colours."""
    return "shape" if kind == "colour" else "colour"


def caption_naming(template: str, kind: str, word: str | None, other: str, index: int = 0, split: str = "train") -> str:
    """A caption from a data template naming `word` (of `kind`; None leaves it out) and `other`
    (a word of other_kind_of(kind)); style and background concepts are shown on the shape
    SHAPES[index % 6]. E.g. ("a {style}{colour} {shape}{bg}", "shape", "disc", "red") -> "a red disc".
    split: "train" or "heldout" (the paraphrases): which wording of that cycled shape and which
    background phrase ("on a dark background" / "against a midnight backdrop") the caption uses."""
    shape = D.WORDS["shape"][D.SHAPES[index % len(D.SHAPES)]][D.SPLITS.index(split)][0]
    return _caption(template, kind, word, other, shape, split=split)


def _caption(template: str, kind: str, word: str | None, other: str, shape: str, bg: str = "",
             split: str = "train") -> str:
    """A caption from `template` naming `word` (of `kind`; None leaves it out), `other` (a word of
    other_kind_of(kind)), the shape word `shape` when the shape slot is free and the background
    phrase `bg` (already formatted) unless kind is background (then `split`'s first phrase)."""
    fill = {"style": "", "bg": bg, "colour": "", "shape": shape}
    fill[other_kind_of(kind)] = other
    if kind in ("shape", "colour"):
        fill[kind] = word or ""
    elif word is not None:
        if kind == "style":
            fill["style"] = word + " "
        else:
            fill["bg"] = D.BG_PHRASES[split][0].format(word)
    return " ".join(template.format(**fill).split())


def varied_captions(kind: str, value: str, word: bool = True) -> list[str]:
    """Captions of the training vocabulary only (D.TEMPLATES["train"], training wordings,
    D.BG_PHRASES["train"]) that vary what erasure_prompt_pairs' default captions hold fixed:
    every training wording of the other main kind (not only the first), the other training
    wordings of the cycled shape, and a training background phrase on half of them (not on
    background concepts). One caption per (template, concept wording, other value, other
    wording); with word=False the same captions without the concept (the surrogates).
    Deterministic; no held-out (paraphrase) wording or template is ever used."""
    other = other_kind_of(kind)
    out = []
    for ti, template in enumerate(D.TEMPLATES["train"]):
        for wi, w in enumerate(training_wordings(kind, value)):
            for i, o in enumerate(D.CONCEPTS[other]):
                for j, o_word in enumerate(D.WORDS[other][o][0]):
                    shape_words = D.WORDS["shape"][D.SHAPES[(i + j + ti) % len(D.SHAPES)]][0]
                    shape = shape_words[(ti + wi + j) % len(shape_words)]
                    bg = ""
                    if kind != "background" and (ti + j + i) % 2:
                        bg_words = D.WORDS["background"][D.BACKGROUNDS[(i + wi) % len(D.BACKGROUNDS)]][0]
                        phrases = D.BG_PHRASES["train"]
                        bg = phrases[(ti + j) % len(phrases)].format(bg_words[ti % len(bg_words)])
                    out.append(_caption(template, kind, w if word else None, o_word, shape, bg))
    return out


def erasure_prompt_pairs(kind: str, value: str, surrogate: str = "drop", varied: bool = False) -> list[tuple[str, str]]:
    """(target, surrogate) caption pairs for SPM / ESD training: every training template and
    wording of the concept with every value of the other main kind (first wording), each paired
    with the same caption without the concept word (surrogate="drop": "a red circle" -> "a red",
    "a striped red circle" -> "a red circle") or with the fixed surrogate text given.
    varied: instead the varied_captions (every training wording of the other kind, other shape
    wordings, training backgrounds: more contexts from the same training vocabulary)."""
    if varied:
        targets = varied_captions(kind, value)
        surrogates = varied_captions(kind, value, word=False) if surrogate == "drop" else [surrogate] * len(targets)
        return list(dict.fromkeys(zip(targets, surrogates)))
    other = other_kind_of(kind)
    pairs = []
    for template in D.TEMPLATES["train"]:
        for word in training_wordings(kind, value):
            for i, o in enumerate(D.CONCEPTS[other]):
                o_word = D.WORDS[other][o][0][0]
                target = caption_naming(template, kind, word, o_word, i)
                pairs.append((target, caption_naming(template, kind, None, o_word, i) if surrogate == "drop" else surrogate))
    return pairs


def validation_prompts(kind: str, value: str, n: int = 24, exclude: Sequence[str] = (), seed: int = 0) -> list[str]:
    """n captions naming the concept for checking an erasure on wordings it was not trained on,
    built from the training vocabulary only: a training template, a training wording of the
    concept, a random value and training wording of the other main kind, a random training
    wording of a random shape (style / background concepts) and, on about two in three, a
    training background phrase. Captions in `exclude` (e.g. the training targets) are skipped, so
    the set is disjoint from them; no held-out (paraphrase) template or wording can occur, since
    D.WORDS keeps the two splits apart. Deterministic in `seed`; one caption per other value in
    turn so every value appears.

    Raises ValueError when fewer than n distinct captions remain after `exclude`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    other = other_kind_of(kind)
    skip = set(exclude)
    g = torch.Generator().manual_seed(seed)
    pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=g))]  # noqa: E731
    out: list[str] = []
    misses = 0
    while misses < 5000:  # 5000 draws in a row without a new caption: the space is used up
        o = D.CONCEPTS[other][len(out) % len(D.CONCEPTS[other])]
        bg = ""
        if kind != "background" and int(torch.randint(3, (1,), generator=g)):
            bg_value = pick(D.BACKGROUNDS)
            bg = pick(D.BG_PHRASES["train"]).format(pick(D.WORDS["background"][bg_value][0]))
        text = _caption(pick(D.TEMPLATES["train"]), kind, pick(training_wordings(kind, value)),
                        pick(D.WORDS[other][o][0]), pick(D.WORDS["shape"][pick(D.SHAPES)][0]), bg)
        if text in skip:
            misses += 1
            continue
        misses = 0
        out.append(text)
        skip.add(text)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} validation captions of {value!r} outside `exclude`, {n} asked for")


def validation_check(pipe, kind: str, value: str, exclude: Sequence[str] = (), n: int = 24,
                     seeds: Sequence[int] = (0, 1, 2, 3), num_inference_steps: int = 15, classifier=None,
                     others: int = 0, others_seeds: Sequence[int] = (0, 1), others_rule: str = "tie-break"):
    """The `validate` of train_spm_selected on a zoo pipeline: a function spm -> the fraction of
    images (n validation_prompts(kind, value, exclude=exclude) x `seeds`, generated with the SPM
    attached) in which the zoo classifier still sees `value`; lower = better erased. Pass the
    training targets as `exclude` so the check uses captions the SPM was not trained on; no
    paraphrase wording or template is ever used (they stay free for the evaluation).

    others > 0 adds a preservation term: `others` validation captions of every other value of the
    same kind x `others_seeds`, and the score grows by how much the classifier's accuracy on them
    falls below the base model's (measured once, on the first call). This sees an SPM that
    erodes its neighbours, which the concept's own images cannot show. others_rule "tie-break"
    (default) returns (rate, drop), so the drop only decides between candidates with the same rate
    (train_spm_selected compares such scores in order); "sum" adds the drop to the concept rate.
    `osmos erase spm --candidates K` uses others=8 with tie-break: every target met in 23 of 26
    fresh training draws against 22 without the term (benchmarks/RESULTS.md)."""
    from osmos.erase.spm import apply_spm

    if others_rule not in ("sum", "tie-break"):
        raise ValueError(f"others_rule must be 'sum' or 'tie-break', got {others_rule!r}")

    prompts = validation_prompts(kind, value, n, exclude=exclude)
    if classifier is None:
        import osmos.zoo

        classifier = osmos.zoo.load("classifier")
    index = D.CONCEPTS[kind].index(value)
    rest = [v for v in D.CONCEPTS[kind] if v != value]
    other_prompts = [p for v in rest for p in validation_prompts(kind, v, others)] if others else []
    other_labels = torch.tensor([D.CONCEPTS[kind].index(v) for v in rest for _ in range(others)],
                                dtype=torch.long).repeat_interleave(len(others_seeds))
    base: list[float] = []

    def accuracy(handle=None) -> float:
        images = generate(pipe, other_prompts, others_seeds, num_inference_steps=num_inference_steps, spm_handle=handle)
        return float((classifier.predict(images)[kind] == other_labels).float().mean())

    def validate(spm) -> float | tuple[float, float]:
        if other_prompts and not base:
            base.append(accuracy())
        with apply_spm(pipe.unet, [spm]) as handle:
            images = generate(pipe, prompts, seeds, num_inference_steps=num_inference_steps, spm_handle=handle)
            drop = max(0.0, base[0] - accuracy(handle)) if other_prompts else 0.0
        rate = float((classifier.predict(images)[kind] == index).float().mean())
        return (rate, drop) if others_rule == "tie-break" and other_prompts else rate + drop

    return validate


def anchor_prompts(kind: str, value: str, captions: bool = True) -> list[str]:
    """Latent Anchoring vocabulary: every training wording of every other concept value (all kinds),
    and with `captions`, the other values of the concept's kind in a caption with each value of
    the other main kind ("a red square" when erasing circle)."""
    prompts = []
    for k, values in D.WORDS.items():
        for v, (train, _) in values.items():
            if (k, v) != (kind, value):
                prompts.extend(train)
    if not captions:
        return prompts
    other = other_kind_of(kind)
    for i, v in enumerate(D.CONCEPTS[other]):
        for w in D.CONCEPTS[kind]:
            if w != value:
                prompts.append(caption_naming(D.TEMPLATES["train"][0], kind, D.WORDS[kind][w][0][0],
                                              D.WORDS[other][v][0][0], i))
    return prompts


@torch.no_grad()
def generate(pipe, prompts: Sequence[str] | None = None, seeds: Sequence[int] = (0,), *, states: Tensor | None = None,
             mask: Tensor | None = None, num_inference_steps: int = 15, guidance_scale: float | None = None,
             spm_handle=None, batch_size: int = 64, progress=None) -> Tensor:
    """One image per (prompt, seed) pair, prompt-major: images [len(prompts) * len(seeds), 3, S, S]
    in [0, 1]. Image k of prompt i starts from the latents of seed seeds[k] whatever the model, so
    two models' images of the same prompt and seed can be compared pixel by pixel.

    states / mask: raw token states [P, T, 384] and mask [P, T] instead of prompts (for embeddings
    that are not the encoding of any text). spm_handle: an SPMHandle on pipe.unet; with a
    FacilitatedTransport its gammas follow each prompt (both halves of the CFG batch).
    progress: an optional tqdm-like bar advanced by the number of images done.
    """
    if (prompts is None) == (states is None):
        raise ValueError("pass either prompts or states (with mask)")
    if states is None:
        states, mask = pipe.encode_prompt(list(prompts))
    elif mask is None:
        raise ValueError("states need their mask [P, T]")
    n_seeds = len(seeds)
    latents = torch.stack([torch.randn(3, pipe.size, pipe.size, generator=torch.Generator().manual_seed(int(s)))
                           for s in seeds])
    all_states = states.repeat_interleave(n_seeds, 0)
    all_mask = mask.repeat_interleave(n_seeds, 0)
    all_latents = latents.repeat(states.shape[0], 1, 1, 1)
    texts = [p for p in prompts for _ in range(n_seeds)] if prompts is not None else None
    out = []
    for i in range(0, all_states.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        if spm_handle is not None and spm_handle.transport is not None:
            if texts is None:
                raise ValueError("Facilitated Transport needs prompts, not raw states")
            spm_handle.set_prompts(texts[sl], classifier_free_guidance=True)
        x = pipe.denoise(all_states[sl], all_mask[sl], num_inference_steps, guidance_scale, latents=all_latents[sl])
        out.append((x + 1) / 2)
        if progress is not None:
            progress.update(x.shape[0])
    return torch.cat(out)


def grid_prompts(concept: str) -> tuple[list[str], list[str]]:
    """(prompts naming the concept, unrelated prompts) for a before / after grid: the concept
    with every value of the other main kind, then 4 captions of other values. A concept outside
    the shapes world gives [concept] and 4 ordinary captions."""
    try:
        kind, value = concept_of(concept)
    except ValueError:
        return [concept], [D.prompt_for(s, c) for s, c in zip(D.SHAPES[:4], D.COLOURS[1:5])]
    if kind not in ("shape", "colour"):  # style / background: name it beside a shape and a colour
        named = [f"a {concept} {c} {s}" for s, c in zip(D.SHAPES, D.COLOURS)]
        return named, [D.prompt_for(s, c) for s, c in zip(D.SHAPES[:4], D.COLOURS[1:5])]
    other_kind = "colour" if kind == "shape" else "shape"
    pair = (lambda v, o: D.prompt_for(v, o)) if kind == "shape" else (lambda v, o: D.prompt_for(o, v))
    named = [pair(value, o) for o in D.CONCEPTS[other_kind]]
    rest = [v for v in D.CONCEPTS[kind] if v != value]
    unrelated = [pair(v, D.CONCEPTS[other_kind][i % 6]) for i, v in enumerate(rest[:4])]
    return named, unrelated


@torch.no_grad()
def concept_rate(images: Tensor, concept: str, classifier=None) -> float | None:
    """Fraction of images in which the zoo classifier sees the concept (None outside the shapes world)."""
    try:
        kind, value = concept_of(concept)
    except ValueError:
        return None
    if classifier is None:
        import osmos.zoo

        classifier = osmos.zoo.load("classifier")
    return float((classifier.predict(images)[kind] == D.CONCEPTS[kind].index(value)).float().mean())
