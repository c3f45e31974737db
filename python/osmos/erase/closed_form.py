"""UCE and RECE: concept erasure by closed-form edits of cross-attention keys and values.

UCE (Gandikota et al., "Unified Concept Editing") replaces, in every cross-attention key and
value projection W [out, D], the output for an erased concept's token embeddings c_i by the
output for a guide concept, v*_i = W c_guide(i), while keeping preserved concepts c_j and the
weights themselves close:

    min_W  eta_e sum_i ||W c_i - v*_i||^2 + eta_p sum_j ||W c_j - W_old c_j||^2 + lambda ||W - W_old||_F^2

whose normal equations give W_new A = W_old (A + eta_e (C_g - C_e)^T C_e) with the D x D system
matrix A = lambda I + eta_e C_e^T C_e + eta_p C_p^T C_p. Two facts make this cheap here:
  * A depends on the text embeddings only, so it is shared by every K/V layer: it is factored
    once (Cholesky, float64) and one triangular solve serves all 2 x 16 matrices of SD 1.x;
  * the update is W_new = W_old + (W_old U) V^T with U = eta_e (C_g - C_e)^T and V = A^-1 C_e^T,
    of rank at most the number of edited tokens: applying it costs two thin matmuls per layer,
    and every edited layer is its original times one shared D x D map X = I + U V^T.

RECE (Gong et al., "Reliable and Efficient Concept Erasure", ECCV 2024) then hardens the edit:
each epoch derives the embedding c' that best regenerates the concept in the edited model,

    c' = (sum_l W_l'^T W_l' + lambda_reg I)^-1 (sum_l W_l'^T W_l) c_tar    (per token),

and erases c' with a further UCE update. Because W_l' = W_l X for all layers, both sums are
X^T G X and X^T G with the Gram matrix G = sum_l W_l^T W_l of the original weights, computed
once: an epoch costs a few D x D products and solves, not a pass over all weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from osmos.erase.text_encoding import TextEncoding, check_token_mode, paired_rows, token_rows


def cross_attention_kv(unet: nn.Module) -> dict[str, nn.Linear]:
    """Every cross-attention key and value projection of a diffusers model, by module name.

    Covers `attn2.to_k` / `attn2.to_v` of every BasicTransformerBlock (and any other diffusers
    `Attention` built with a `cross_attention_dim`). Raises ValueError if there is none.
    """
    layers: dict[str, nn.Linear] = {}
    for name, module in unet.named_modules():
        if getattr(module, "is_cross_attention", False) and hasattr(module, "to_k"):
            for proj in ("to_k", "to_v"):
                layer = getattr(module, proj)
                if not isinstance(layer, nn.Linear):
                    raise TypeError(f"{name}.{proj} is a {type(layer).__name__}, expected nn.Linear")
                layers[f"{name}.{proj}"] = layer
    if not layers:
        raise ValueError(
            f"{type(unet).__name__} has no cross-attention (no Attention module with a "
            "cross_attention_dim): there are no key/value projections to edit"
        )
    return layers


def _factor_spd(matrix: Tensor, what: str) -> Tensor:
    """Lower Cholesky factor of a symmetric positive-definite float64 matrix, or a clear error."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        raise ValueError(
            f"{what} is not positive definite (Cholesky failed at column {int(info)}); "
            "use a positive lambda_ / lambda_reg"
        )
    return factor


def uce_update(
    erase: Tensor,
    guide: Tensor,
    preserve: Tensor | None,
    lambda_: float,
    eta_e: float = 1.0,
    eta_p: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The UCE edit as a low-rank update shared by every K/V layer: W_new = W + (W U) V^T.

    erase, guide: [n, D] token embeddings (row i of `erase` is to produce what row i of `guide`
        produces). preserve: [m, D] or None. All are used in float64.
    Returns U, V: float64 [D, n]. W_new minimises the UCE objective for every W at once.
    """
    if erase.dim() != 2 or guide.shape != erase.shape:
        raise ValueError(f"erase and guide must both be [n, D]; got {tuple(erase.shape)} and {tuple(guide.shape)}")
    if lambda_ < 0 or eta_e < 0 or eta_p < 0:
        raise ValueError(f"lambda_, eta_e and eta_p must be >= 0; got {lambda_}, {eta_e}, {eta_p}")
    c_e = erase.to(torch.float64)
    c_g = guide.to(device=c_e.device, dtype=torch.float64)
    dim = c_e.shape[1]
    system = eta_e * (c_e.T @ c_e)
    if preserve is not None and preserve.numel():
        if preserve.dim() != 2 or preserve.shape[1] != dim:
            raise ValueError(f"preserve must be [m, {dim}]; got {tuple(preserve.shape)}")
        c_p = preserve.to(device=c_e.device, dtype=torch.float64)
        system.addmm_(c_p.T, c_p, alpha=eta_p)
    system.diagonal().add_(lambda_)
    factor = _factor_spd(system, "the UCE system matrix lambda I + eta_e C_e^T C_e + eta_p C_p^T C_p")
    v = torch.cholesky_solve(c_e.T.contiguous(), factor)  # A^-1 C_e^T, [D, n]
    u = eta_e * (c_g - c_e).T  # [D, n]
    return u, v


_STACK_ELEMENTS = 1 << 25  # float64 elements per stacked block of weights (256 MB)


def _stacked_blocks(layers: dict[str, nn.Linear]) -> list[list[nn.Linear]]:
    """Consecutive layers of one device, grouped so that each group's weights fit one block."""
    blocks: list[list[nn.Linear]] = []
    size = 0
    for layer in layers.values():
        w = layer.weight
        if blocks and size + w.numel() <= _STACK_ELEMENTS and blocks[-1][0].weight.device == w.device:
            blocks[-1].append(layer)
            size += w.numel()
        else:
            blocks.append([layer])
            size = w.numel()
    return blocks


def _stack(block: list[nn.Linear]) -> tuple[Tensor, list[int]]:
    """The block's weights stacked into one float64 [sum of rows, D] tensor, and the row counts."""
    rows = [layer.weight.shape[0] for layer in block]
    stacked = torch.empty(sum(rows), block[0].weight.shape[1], dtype=torch.float64, device=block[0].weight.device)
    for part, layer in zip(stacked.split(rows), block):
        part.copy_(layer.weight.detach())
    return stacked, rows


_KEEP_ELEMENTS = 1 << 27  # float64 elements kept across RECE epochs at most (1 GB; SD 1.x needs 22M)


class StackedWeights:
    """The K/V weights as float64 blocks [sum of rows, D], kept across updates.

    Every update W <- W + (W U) V^T is applied to the float64 copy and rounded once into the
    layers' weights, so RECE's epochs neither re-read nor re-round the weights (the layers hold
    round(W_original X) for the composed map X). Above `_KEEP_ELEMENTS` elements the blocks are
    not kept: each update restacks from the current weights (less memory, one rounding per update).
    """

    def __init__(self, layers: dict[str, nn.Linear], keep: bool = True):
        self.groups = _stacked_blocks(layers)
        total = sum(layer.weight.numel() for layer in layers.values())
        self.keep = keep and total <= _KEEP_ELEMENTS
        self.blocks = [_stack(group) for group in self.groups] if self.keep else None

    def _each(self):
        for i, group in enumerate(self.groups):
            yield i, group, (self.blocks[i] if self.keep else _stack(group))

    def gram(self) -> Tensor:
        """G = sum_l W_l^T W_l, float64 [D, D] (on the first layer's device)."""
        gram = None
        for _, _, (stacked, _) in self._each():
            part = stacked.T @ stacked
            gram = part if gram is None else gram.add_(part.to(gram.device))
        return gram

    def update(self, u: Tensor, v: Tensor) -> None:
        """W <- W + (W U) V^T for every layer; with rank above D / 2 the dense W (I + U V^T) is
        the cheaper product."""
        dense = 2 * u.shape[1] > u.shape[0]
        if dense:
            x = torch.eye(u.shape[0], dtype=torch.float64, device=u.device).addmm_(u, v.T)
        with torch.no_grad():
            for i, group, (stacked, rows) in self._each():
                device = group[0].weight.device
                if dense:
                    stacked = stacked @ x.to(device)
                else:
                    stacked.addmm_(stacked @ u.to(device), v.T.to(device))
                if self.keep:
                    self.blocks[i] = (stacked, rows)
                for part, layer in zip(stacked.split(rows), group):
                    layer.weight.copy_(part)


def apply_update(layers: dict[str, nn.Linear], u: Tensor, v: Tensor) -> None:
    """W <- W + (W U) V^T in float64 for every layer, rounded once to the weight's dtype.

    The weights are stacked into float64 blocks [sum of rows, D] so that each product is one
    large matmul. With rank n above D / 2 the dense W (I + U V^T) is the cheaper product.
    """
    StackedWeights(layers, keep=False).update(u, v)


def original_gram(layers: dict[str, nn.Linear]) -> Tensor:
    """G = sum_l W_l^T W_l over the layers, float64 [D, D] (on the first layer's device)."""
    return StackedWeights(layers, keep=False).gram()


def regenerating_embeddings(gram: Tensor, input_map: Tensor, target: Tensor, lambda_reg: float) -> Tensor:
    """RECE's closed-form embeddings c' that regenerate `target` in the edited model.

    gram: G = sum_l W_l^T W_l of the original weights [D, D]; input_map: X with W_l' = W_l X;
    target: [k, D] token embeddings of the concept. Returns [k, D] float64,
    c' = argmin_c sum_l ||W_l' c - W_l c_tar||^2 + lambda_reg ||c||^2 for every row.
    """
    if lambda_reg <= 0:
        raise ValueError(f"lambda_reg must be > 0, got {lambda_reg}")
    gx = gram @ input_map  # G X
    system = input_map.T @ gx
    system = 0.5 * (system + system.T)
    system.diagonal().add_(lambda_reg)
    factor = _factor_spd(system, "X^T G X + lambda_reg I")
    rhs = gx.T @ target.to(device=gram.device, dtype=torch.float64).T  # X^T G c_tar, [D, k]
    return torch.cholesky_solve(rhs, factor).T


@dataclass
class ClosedFormEdit:
    """What a UCE / RECE edit changed, enough to undo it bitwise.

    layer_names: the edited key/value projections. original: their weights before the edit
    (same dtype and device). input_map: float64 [D, D] X with W_edited = W_original X before
    rounding to the weight dtype. settings: the arguments of the edit. RECE only:
    epoch_scores (validation score after the UCE edit, index 0, and after each RECE epoch),
    best_epoch (the epoch kept), derived (per RECE epoch, the [k, D] embeddings erased).
    """

    method: str
    layer_names: tuple[str, ...]
    original: dict[str, Tensor]
    input_map: Tensor
    settings: dict
    epoch_scores: list[float] = field(default_factory=list)
    best_epoch: int = 0
    derived: list[Tensor] = field(default_factory=list)

    def undo(self, unet: nn.Module) -> None:
        """Restore the original weights exactly."""
        layers = cross_attention_kv(unet)
        missing = [n for n in self.layer_names if n not in layers]
        if missing:
            raise ValueError(f"the model has no layers named {missing[:3]}: not the model this edit was made on")
        with torch.no_grad():
            for name in self.layer_names:
                layers[name].weight.copy_(self.original[name])

    def edited_weights(self, unet: nn.Module) -> dict[str, Tensor]:
        """The current (edited) weights of the edited layers, by name."""
        layers = cross_attention_kv(unet)
        return {name: layers[name].weight.detach() for name in self.layer_names}


def _editable_layers(unet: nn.Module, dim: int) -> dict[str, nn.Linear]:
    layers = cross_attention_kv(unet)
    wrong = {n: l.in_features for n, l in layers.items() if l.in_features != dim}
    if wrong:
        name, width = next(iter(wrong.items()))
        raise ValueError(
            f"{name} takes {width}-d inputs but the text encoding gives {dim}-d token states "
            "(is this the text encoder of this UNet?)"
        )
    return layers


def _as_list(concepts: str | Sequence[str], what: str) -> list[str]:
    items = [concepts] if isinstance(concepts, str) else list(concepts)
    if any(not isinstance(c, str) for c in items):
        raise TypeError(f"{what} must be a string or a sequence of strings")
    return items


def _guides(guide: str | Sequence[str], n: int) -> list[str]:
    guides = _as_list(guide, "guide")
    if len(guides) == 1:
        return guides * n
    if len(guides) != n:
        raise ValueError(f"guide must be one prompt or one per erased concept ({n}); got {len(guides)}")
    return guides


def _uce_rows(
    text_encoder: TextEncoding, erase: Sequence[str], guide, preserve: Sequence[str], tokens: str
) -> tuple[list[Tensor], Tensor, Tensor, Tensor | None]:
    erase = _as_list(erase, "erase")
    if not erase:
        raise ValueError("erase must name at least one concept")
    check_token_mode(tokens)
    if not callable(getattr(text_encoder, "subject_index", None)):
        raise TypeError("text_encoder must be a TextEncoding (encode + subject_index); see osmos.erase.text_encoding")
    erase_rows = token_rows(text_encoder, erase, tokens)
    guide_rows = token_rows(text_encoder, _guides(guide, len(erase)), tokens)
    c_e, c_g = paired_rows(erase_rows, guide_rows)
    preserve = _as_list(preserve, "preserve")
    c_p = torch.cat(token_rows(text_encoder, preserve, tokens)) if preserve else None
    return erase_rows, c_e, c_g, c_p


def _compose(input_map: Tensor, u: Tensor, v: Tensor) -> Tensor:
    return input_map.addmm(input_map @ u, v.T)  # X (I + U V^T)


@dataclass
class _Started:
    layers: dict[str, nn.Linear]
    original: dict[str, Tensor]
    stacked: StackedWeights
    gram: Tensor | None
    input_map: Tensor
    erase_rows: list[Tensor]
    settings: dict


def _uce_start(unet, text_encoder, erase, guide, preserve, lambda_, eta_e, eta_p, tokens, with_gram) -> _Started:
    """Encode the prompts, record the original weights (and their Gram matrix), apply UCE."""
    erase_rows, c_e, c_g, c_p = _uce_rows(text_encoder, erase, guide, preserve, tokens)
    dim = c_e.shape[1]
    layers = _editable_layers(unet, dim)
    device = next(iter(layers.values())).weight.device
    original = {n: l.weight.detach().clone() for n, l in layers.items()}
    stacked = StackedWeights(layers, keep=with_gram)
    gram = stacked.gram() if with_gram else None
    u, v = uce_update(c_e.to(device), c_g, c_p, lambda_, eta_e, eta_p)
    stacked.update(u, v)
    input_map = _compose(torch.eye(dim, dtype=torch.float64, device=device), u, v)
    settings = dict(erase=_as_list(erase, "erase"), guide=guide if isinstance(guide, str) else list(guide),
                    preserve=_as_list(preserve, "preserve"), lambda_=lambda_, eta_e=eta_e, eta_p=eta_p,
                    tokens=tokens)
    return _Started(layers, original, stacked, gram, input_map, [r.to(device) for r in erase_rows], settings)


def uce_edit(
    unet: nn.Module,
    text_encoder: TextEncoding,
    erase: str | Sequence[str],
    guide: str | Sequence[str] = " ",
    preserve: str | Sequence[str] = (),
    lambda_: float = 0.5,
    eta_e: float = 1.0,
    eta_p: float = 1.0,
    tokens: str = "all",
) -> ClosedFormEdit:
    """Erase concepts from every cross-attention key and value projection of `unet` (in place).

    erase: concept prompt(s). guide: one prompt, or one per erased concept, whose outputs the
    erased concepts are mapped to (" " = nothing, "art" for styles). preserve: prompts whose
    outputs are to stay. tokens: "all" (subject token and every position after it) or
    "last_subject". Returns the edit record (`.undo(unet)` restores the weights bitwise).
    """
    st = _uce_start(unet, text_encoder, erase, guide, preserve, lambda_, eta_e, eta_p, tokens, with_gram=False)
    return ClosedFormEdit("uce", tuple(st.layers), st.original, st.input_map, st.settings)


def rece_edit(
    unet: nn.Module,
    text_encoder: TextEncoding,
    erase: str | Sequence[str],
    guide: str | Sequence[str] = " ",
    preserve: str | Sequence[str] = (),
    lambda_: float = 0.5,
    eta_e: float = 1.0,
    eta_p: float = 1.0,
    tokens: str = "all",
    epochs: int = 2,
    lambda_reg: float = 1e-3,
    validate: Callable[[nn.Module], float] | None = None,
    rece_guide: str = " ",
    rece_preserve: str | Sequence[str] = (" ",),
    rece_lambda: float = 0.1,
    rece_eta_p: float = 0.1,
) -> ClosedFormEdit:
    """UCE, then `epochs` RECE epochs, each deriving and erasing an embedding that regenerates
    the concepts in the edited model. Edits `unet` in place.

    The first arguments are those of `uce_edit` (the starting edit). lambda_reg: the ridge
    weight of the derivation (about 0.1 for nudity / easy objects, 1e-3 for styles and hard
    objects). validate(unet) -> score (higher is better) is called after the UCE edit (epoch 0)
    and after every epoch; the model is left at the best-scoring epoch (the last one without a
    callback). rece_guide / rece_preserve / rece_lambda / rece_eta_p: the UCE update of each
    epoch ("art" is the other usual guide).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if lambda_reg <= 0:
        raise ValueError(f"lambda_reg must be > 0, got {lambda_reg}")
    st = _uce_start(unet, text_encoder, erase, guide, preserve, lambda_, eta_e, eta_p, tokens, with_gram=epochs > 0)
    layers, input_map = st.layers, st.input_map
    device = input_map.device
    guide_rows = token_rows(text_encoder, [rece_guide] * len(st.erase_rows), tokens)
    rece_preserve = _as_list(rece_preserve, "rece_preserve")
    preserve_rows = torch.cat(token_rows(text_encoder, rece_preserve, tokens)).to(device) if rece_preserve else None
    target = torch.cat(st.erase_rows)
    sizes = [r.shape[0] for r in st.erase_rows]

    def snapshot() -> dict[str, Tensor]:
        return {n: l.weight.detach().clone() for n, l in layers.items()}

    scores = [float(validate(unet))] if validate is not None else []
    best_epoch, best_map = 0, input_map
    best_weights = snapshot() if validate is not None and epochs > 0 else None
    derived = []
    for epoch in range(1, epochs + 1):
        found = regenerating_embeddings(st.gram, input_map, target, lambda_reg)
        derived.append(found)
        c_found, c_guide = paired_rows(list(found.split(sizes)), guide_rows)
        u, v = uce_update(c_found, c_guide, preserve_rows, rece_lambda, 1.0, rece_eta_p)
        st.stacked.update(u, v)
        input_map = _compose(input_map, u, v)
        if validate is not None:
            scores.append(float(validate(unet)))
        if validate is None or scores[-1] > scores[best_epoch]:
            best_epoch, best_map = epoch, input_map
            best_weights = snapshot() if validate is not None and epoch < epochs else None
    if best_epoch != epochs:  # later epochs scored worse: go back to the best one
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(best_weights[name])
    settings = dict(st.settings, epochs=epochs, lambda_reg=lambda_reg, rece_guide=rece_guide,
                    rece_preserve=rece_preserve, rece_lambda=rece_lambda, rece_eta_p=rece_eta_p)
    return ClosedFormEdit("rece", tuple(layers), st.original, best_map, settings, scores, best_epoch, derived)
