"""Text encoders seen as the cross-attention layers see them, and the choice of token rows to edit.

The closed-form edits (`osmos.erase.closed_form`) need, for each prompt, the token states that
the UNet's cross-attention keys and values are computed from, which of those positions the
UNet actually attends to, and where the prompt's subject (its last word) sits. `TextEncoding`
holds exactly that, so the edits work with CLIP (Stable Diffusion 1.x / 2.x), the two CLIP
encoders of SDXL, and BERT-like encoders such as the zoo's MiniLM alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

TOKEN_MODES = ("all", "last_subject")


@dataclass(frozen=True)
class TextEncoding:
    """A text encoder as two callables.

    encode(prompts) -> (states [B, T, D] float, mask [B, T] bool): the token states fed to the
        UNet's cross-attention (`encoder_hidden_states`) and True where the UNet attends
        (for Stable Diffusion every one of the 77 positions, padding included).
    subject_index(prompts) -> [B] int64: the position of each prompt's last subject token
        (the last word piece before the end token; the start token for an empty prompt).
    """

    encode: Callable[[Sequence[str]], tuple[Tensor, Tensor]]
    subject_index: Callable[[Sequence[str]], Tensor]

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        return self.encode(prompts)


def _tokenize(tokenizer, prompts: Sequence[str], max_length: int | None):
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )


def _last_content_index(tokenizer, prompts: Sequence[str], max_length: int | None) -> Tensor:
    # Real tokens are [start, w_1 .. w_n, end]: the last word piece is at (count - 2), the start
    # token (index 0) when the prompt is empty.
    count = _tokenize(tokenizer, prompts, max_length).attention_mask.sum(dim=1)
    return (count - 2).clamp(min=0).to(torch.int64)


def hf_text_encoding(
    tokenizer,
    text_encoder,
    *,
    attend_padding: bool = True,
    hidden_layer: int | None = None,
    max_length: int | None = None,
) -> TextEncoding:
    """A `TextEncoding` for one transformers text encoder (CLIP of SD 1.x / 2.x, BERT-like MiniLM).

    attend_padding: True when the UNet sees every position (Stable Diffusion: no attention mask
        on the 77 CLIP states); False to attend only the tokenizer's attention mask.
    hidden_layer: None for the last hidden state (SD 1.x / 2.x); an index into
        `hidden_states` otherwise (-2 is the penultimate layer, as SDXL uses).
    max_length: padded length; the tokenizer's `model_max_length` when None.
    """

    @torch.no_grad()
    def encode(prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        tokens = _tokenize(tokenizer, prompts, max_length)
        device = next(text_encoder.parameters()).device
        out = text_encoder(
            tokens.input_ids.to(device),
            attention_mask=None if attend_padding else tokens.attention_mask.to(device),
            output_hidden_states=hidden_layer is not None,
        )
        states = out.last_hidden_state if hidden_layer is None else out.hidden_states[hidden_layer]
        mask = torch.ones_like(tokens.attention_mask, dtype=torch.bool) if attend_padding else tokens.attention_mask.bool()
        return states, mask.to(states.device)

    return TextEncoding(encode, lambda prompts: _last_content_index(tokenizer, prompts, max_length))


def sdxl_text_encoding(tokenizer, tokenizer_2, text_encoder, text_encoder_2) -> TextEncoding:
    """SDXL's dual CLIP encoders: penultimate hidden states of both, concatenated on the feature
    axis ([B, 77, 768 + 1280] for SDXL), as `StableDiffusionXLPipeline` builds its prompt states."""
    first = hf_text_encoding(tokenizer, text_encoder, hidden_layer=-2)
    second = hf_text_encoding(tokenizer_2, text_encoder_2, hidden_layer=-2)

    def encode(prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        (s1, m1), (s2, m2) = first.encode(prompts), second.encode(prompts)
        return torch.cat([s1, s2.to(s1.device)], dim=-1), m1 & m2.to(m1.device)

    return TextEncoding(encode, first.subject_index)


def pipeline_text_encoding(pipe) -> TextEncoding:
    """The `TextEncoding` of a diffusers Stable Diffusion (1.x / 2.x) or SDXL pipeline
    (base: both encoders; refiner: its second encoder alone)."""
    first, second = getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)
    if second is not None and first is not None:
        return sdxl_text_encoding(pipe.tokenizer, pipe.tokenizer_2, first, second)
    if second is not None:
        return hf_text_encoding(pipe.tokenizer_2, second, hidden_layer=-2)
    if first is None:
        raise ValueError(f"{type(pipe).__name__} has no text_encoder / text_encoder_2")
    return hf_text_encoding(pipe.tokenizer, first)


def check_token_mode(tokens: str) -> None:
    if tokens not in TOKEN_MODES:
        raise ValueError(f"tokens must be one of {TOKEN_MODES}, got {tokens!r}")


def token_rows(encoding: TextEncoding, prompts: Sequence[str], tokens: str) -> list[Tensor]:
    """For each prompt, the token states to edit, as a float64 [k, D] tensor.

    "last_subject": the last subject token alone (k = 1).
    "all": the last subject token and every attended position after it (end token and, for
    CLIP, the padding states that carry the prompt through causal attention). Rows of two
    prompts correspond position by position from their subject tokens on, which is how an
    erased concept is paired with its guide.
    """
    check_token_mode(tokens)
    if len(prompts) == 0:
        return []
    states, mask = encoding.encode(prompts)
    subject = encoding.subject_index(prompts).to(states.device)
    if states.dim() != 3 or mask.shape != states.shape[:2] or subject.shape != (len(prompts),):
        raise ValueError(
            "text encoding must give states [B, T, D], mask [B, T] and subject_index [B]; got "
            f"{tuple(states.shape)}, {tuple(mask.shape)}, {tuple(subject.shape)}"
        )
    rows = []
    for b in range(len(prompts)):
        s = int(subject[b])
        if tokens == "last_subject":
            rows.append(states[b, s : s + 1].to(torch.float64))
        else:
            keep = mask[b, s:].bool()
            rows.append(states[b, s:][keep].to(torch.float64))
    return rows


def paired_rows(erase_rows: list[Tensor], guide_rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack erase / guide token rows pairwise, each pair cut to its shorter length.

    Returns (C_erase [n, D], C_guide [n, D]) float64.
    """
    e, g = [], []
    for er, gr in zip(erase_rows, guide_rows, strict=True):
        n = min(er.shape[0], gr.shape[0])
        e.append(er[:n])
        g.append(gr[:n].to(er.device))
    return torch.cat(e), torch.cat(g)
