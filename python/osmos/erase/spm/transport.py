"""Facilitated Transport: per-prompt, per-SPM strength gamma from text similarity.

    gamma_i(p) = clamp( factor * max over w in W_i of max( sim(E(p), E(w)), |T(p) & T(w)| / |T(w)| ), 0, 1 )

E: text-encoder states of the content tokens (special and padding tokens excluded), T: the set
of content token ids, W_i: SPM i's wordings (every text it was trained to erase: "circle",
"disc", "round shape"; by default just its concept), so a prompt using any of them gets the
strength of a prompt using the concept word. The reference implementation compares all 77
positions flattened, padding included, which makes unrelated prompts look similar; osmos
measures similarity on content tokens only. Rules (`rule=`):
  "token_max"  max over the prompt's tokens of cos(token state, concept's mean state) (default)
  "pooled"     cos(mean prompt state, mean concept state)
  "token_all"  min over the concept's tokens of the max over the prompt's tokens of cos: every
               token of a multi-word wording must be matched ("round shape" does not match
               "a star shape" through "shape" alone)
  "flattened"  cos of all positions flattened, padding included (the reference's rule, kept
               only to measure what it does)
or a callable(prompt: PromptEncoding, concept: PromptEncoding) -> float.
Gammas are computed once per distinct prompt and cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PromptEncoding:
    """One prompt as the text encoder sees it: states [L, dim], token_ids [L], content [L]
    (True for real tokens, False for special / padding positions)."""

    states: Tensor
    token_ids: Tensor
    content: Tensor

    def content_states(self) -> Tensor:
        return self.states[self.content].float()

    def content_ids(self) -> set[int]:
        return set(self.token_ids[self.content].tolist())


Encoder = Callable[[Sequence[str]], Sequence[PromptEncoding]]


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def similarity_token_max(prompt: PromptEncoding, concept: PromptEncoding) -> float:
    p, c = prompt.content_states(), concept.content_states()
    if len(p) == 0 or len(c) == 0:
        return 0.0
    return float(_cos(p, c.mean(0, keepdim=True)).max())


def similarity_pooled(prompt: PromptEncoding, concept: PromptEncoding) -> float:
    p, c = prompt.content_states(), concept.content_states()
    if len(p) == 0 or len(c) == 0:
        return 0.0
    return float(_cos(p.mean(0), c.mean(0)))


def similarity_token_all(prompt: PromptEncoding, concept: PromptEncoding) -> float:
    p, c = prompt.content_states(), concept.content_states()
    if len(p) == 0 or len(c) == 0:
        return 0.0
    return float(_cos(p[:, None], c[None]).max(0).values.min())  # [P, C] -> best prompt token per concept token


def similarity_flattened(prompt: PromptEncoding, concept: PromptEncoding) -> float:
    return float(_cos(prompt.states.float().reshape(-1), concept.states.float().reshape(-1)))


RULES: dict[str, Callable[[PromptEncoding, PromptEncoding], float]] = {
    "token_max": similarity_token_max,
    "pooled": similarity_pooled,
    "token_all": similarity_token_all,
    "flattened": similarity_flattened,
}


def token_overlap(prompt: PromptEncoding, concept: PromptEncoding, ignore: frozenset[int] = frozenset()) -> float:
    """|T(p) & T(c)| / |T(c)| on content token ids, leaving out `ignore` (e.g. stop words)."""
    c = concept.content_ids() - ignore
    return len((prompt.content_ids() - ignore) & c) / len(c) if c else 0.0


class FacilitatedTransport:
    """Computes gamma [B, C] for prompts against the concepts of C SPMs.

    Args:
        encode: maps prompts to PromptEncodings (see `transformers_encoder`).
        concepts: per SPM, in apply_spm's order, its concept text or the list of its wordings
            (gamma is the maximum over them); `for_spms` takes them from the SPMs.
        factor: the facilitate factor f.
        rule: a name in RULES or a callable.
        use_token_overlap: include the token-overlap term.
        overlap_ignore_ids: token ids the overlap term leaves out (stop words such as "a": with
            them, every "a ..." prompt shares half of the concept "a cat").
    """

    def __init__(self, encode: Encoder, concepts: Sequence[str | Sequence[str]], factor: float = 1.0,
                 rule: str | Callable[[PromptEncoding, PromptEncoding], float] = "token_max",
                 use_token_overlap: bool = True, overlap_ignore_ids: Sequence[int] = ()):
        if isinstance(rule, str):
            if rule not in RULES:
                raise ValueError(f"rule must be one of {sorted(RULES)} or a callable, got {rule!r}")
            rule = RULES[rule]
        self.encode, self.factor, self.rule, self.use_token_overlap = encode, float(factor), rule, use_token_overlap
        self.concepts = list(concepts)
        self.wordings = [[c] if isinstance(c, str) else list(c) for c in self.concepts]
        if not all(self.wordings):
            raise ValueError("every concept needs at least one wording")
        self.overlap_ignore_ids = frozenset(int(i) for i in overlap_ignore_ids)
        encoded = iter(encode([w for ws in self.wordings for w in ws]))
        self._concept_encodings = [[next(encoded) for _ in ws] for ws in self.wordings]
        self._cache: dict[str, Tensor] = {}

    @classmethod
    def for_spms(cls, encode: Encoder, spms: Sequence, **kwargs) -> "FacilitatedTransport":
        """Facilitated Transport over the wordings stored in each SPM (`SPM.wordings`)."""
        return cls(encode, [list(spm.wordings) for spm in spms], **kwargs)

    def similarity(self, prompt: PromptEncoding, wording: PromptEncoding) -> float:
        """The rule's similarity, or the token overlap if that is larger (before factor and clamping)."""
        score = self.rule(prompt, wording)
        if self.use_token_overlap:
            score = max(score, token_overlap(prompt, wording, self.overlap_ignore_ids))
        return score

    def strengths(self, prompt: PromptEncoding) -> Tensor:
        """gamma [C] for one encoded prompt: per SPM, the best match over its wordings."""
        values = []
        for wordings in self._concept_encodings:
            score = max(self.similarity(prompt, w) for w in wordings)
            values.append(min(1.0, max(0.0, self.factor * score)))
        return torch.tensor(values, dtype=torch.float32)

    def gammas(self, prompts: Sequence[str]) -> Tensor:
        """gamma [len(prompts), C]; each distinct prompt is encoded once."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if new:
            for text, enc in zip(new, self.encode(new)):
                self._cache[text] = self.strengths(enc)
        return torch.stack([self._cache[p] for p in prompts]) if prompts else torch.zeros(0, len(self.concepts))


def transformers_encoder(tokenizer, text_encoder, max_length: int | None = None) -> Encoder:
    """An Encoder from a Hugging Face tokenizer and text encoder (e.g. CLIP): padded to
    max_length (the tokenizer's model_max_length by default); special and padding tokens are
    marked non-content."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])

    @torch.no_grad()
    def encode(prompts: Sequence[str]) -> list[PromptEncoding]:
        length = max_length or tokenizer.model_max_length
        batch = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        ids = batch["input_ids"]
        device = next(text_encoder.parameters()).device
        states = text_encoder(ids.to(device))[0].float().cpu()
        mask = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        content = mask & ~torch.isin(ids, torch.tensor(sorted(special), dtype=ids.dtype))
        return [PromptEncoding(states[i], ids[i], content[i]) for i in range(len(prompts))]

    return encode
