"""Replication metrics on descriptor features (L2-normalised, so inner product = cosine).

- `replication_scores`: each generation's top-1 training match and similarity, and whether it
  counts as a replica (similarity >= threshold; Somepalli et al. use 0.5 for SSCD at 224 px).
- `replication_rate`: the dataset-level fraction of generations that are replicas.
- `calibrate_threshold`: a threshold for a descriptor whose scale is unknown (the pixel
  baseline): a high quantile of the top-1 similarities of fresh, non-copied images of the same
  distribution to the training set, so an independent image is rarely flagged.
- `retrieval_precision_recall`: scores a scan against ground truth (which generations copy which
  training image), for models built to memorize known images; `micro_average_precision` ranks
  every generation's top-1 match by similarity (no threshold).
- `roc_auc`, `roc_auc_ci`: how well a score (e.g. `memorization_score`) separates positives from
  negatives, with a bootstrap confidence interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from osmos.ops import similarity_topk


@dataclass
class ReplicationScores:
    """Per generation (each a tensor [G]): the best training match, its similarity, and whether
    that similarity reaches `threshold`."""

    match: Tensor  # long
    similarity: Tensor  # float32
    replicated: Tensor  # bool
    threshold: float

    @property
    def rate(self) -> float:
        """Fraction of generations that are replicas (0.0 when there are none)."""
        return float(self.replicated.float().mean()) if self.replicated.numel() else 0.0


def _features(name: str, x) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float [n, dim] feature matrix, got {x.dtype} {tuple(x.shape)}")
    return x


def replication_scores(generated: Tensor, training: Tensor, threshold: float) -> ReplicationScores:
    """Top-1 training match of every generation.

    generated: [G, D] features; training: [N, D] features (tensor, array or memmap; N >= 1), both
    L2-normalised by the same descriptor. threshold: similarity at or above which a generation is
    a replica.
    """
    generated = _features("generated", generated).float()
    if isinstance(training, Tensor):
        _features("training", training)
    if len(training) == 0:
        raise ValueError("training must hold at least one feature row")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
    scores, index = similarity_topk(generated, training, 1)
    sim = scores[:, 0]
    return ReplicationScores(index[:, 0], sim, sim >= threshold, float(threshold))


def replication_rate(generated: Tensor, training: Tensor, threshold: float) -> float:
    """Fraction of generations whose top-1 training similarity is >= threshold."""
    return replication_scores(generated, training, threshold).rate


def calibrate_threshold(fresh: Tensor, training: Tensor, quantile: float = 0.99) -> float:
    """The `quantile` of top-1 similarities of fresh images (features [F, D], drawn from the
    training distribution but not in the training set) to the training features [N, D]."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    fresh = _features("fresh", fresh).float()
    if len(fresh) == 0:
        raise ValueError("fresh must hold at least one feature row")
    top1 = similarity_topk(fresh, training, 1)[0][:, 0]
    return float(torch.quantile(top1.double(), quantile))


def retrieval_precision_recall(scores: ReplicationScores, truth: Sequence[int]) -> tuple[float, float]:
    """(precision, recall) of the flagged generations against ground truth.

    truth[i] is the index of the training image generation i was made to copy, or -1 when it
    copies none. A flagged generation is a true positive when truth[i] >= 0 and its top-1 match is
    truth[i]. precision = true positives / flagged (1.0 when nothing is flagged); recall = true
    positives / generations with truth >= 0 (1.0 when there are none).
    """
    truth_t = torch.as_tensor(list(truth), dtype=torch.long)
    if truth_t.shape != scores.match.shape:
        raise ValueError(f"truth must have one entry per generation ({scores.match.numel()}), got {truth_t.numel()}")
    hit = scores.replicated & (truth_t >= 0) & (scores.match == truth_t)
    flagged, positives = int(scores.replicated.sum()), int((truth_t >= 0).sum())
    precision = int(hit.sum()) / flagged if flagged else 1.0
    recall = int(hit.sum()) / positives if positives else 1.0
    return precision, recall


def micro_average_precision(scores: ReplicationScores, truth: Sequence[int]) -> float:
    """Micro average precision (the DISC21 copy-detection metric): every generation's top-1 match,
    ranked by similarity over all generations, is correct when truth[i] >= 0 and the match is
    truth[i]; the area under that ranking's precision-recall curve, recall counted over the
    generations with truth >= 0 (1.0 when there are none)."""
    truth_t = torch.as_tensor(list(truth), dtype=torch.long)
    if truth_t.shape != scores.match.shape:
        raise ValueError(f"truth must have one entry per generation ({scores.match.numel()}), got {truth_t.numel()}")
    positives = int((truth_t >= 0).sum())
    if positives == 0:
        return 1.0
    order = torch.argsort(scores.similarity, descending=True, stable=True)
    correct = ((truth_t >= 0) & (scores.match == truth_t))[order].double()
    precision_at = correct.cumsum(0) / torch.arange(1, len(correct) + 1, dtype=torch.float64)
    return float((precision_at * correct).sum() / positives)


def roc_auc(positive: Sequence[float] | Tensor, negative: Sequence[float] | Tensor) -> float:
    """Area under the ROC curve: the probability that a random positive scores higher than a
    random negative (ties count one half). Needs at least one of each."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    if torch.isnan(pos).any() or torch.isnan(neg).any():
        raise ValueError("scores must not be NaN")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def roc_auc_ci(positive: Sequence[float] | Tensor, negative: Sequence[float] | Tensor, level: float = 0.95,
               resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(AUC, lower, upper): `roc_auc` and its percentile bootstrap confidence interval at `level`,
    resampling positives and negatives separately (with replacement) `resamples` times."""
    pos = torch.as_tensor(positive, dtype=torch.float64).flatten()
    neg = torch.as_tensor(negative, dtype=torch.float64).flatten()
    auc = roc_auc(pos, neg)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    g = torch.Generator().manual_seed(seed)
    ip = torch.randint(pos.numel(), (resamples, pos.numel()), generator=g)
    ineg = torch.randint(neg.numel(), (resamples, neg.numel()), generator=g)
    wins = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double())
    # mean of the win matrix over the resampled rows and columns, without materialising each resample
    counts_p = torch.zeros(resamples, pos.numel(), dtype=torch.float64).scatter_add_(
        1, ip, torch.ones_like(ip, dtype=torch.float64))
    counts_n = torch.zeros(resamples, neg.numel(), dtype=torch.float64).scatter_add_(
        1, ineg, torch.ones_like(ineg, dtype=torch.float64))
    boot = ((counts_p @ wins) * counts_n).sum(dim=1) / (pos.numel() * neg.numel())
    tail = (1 - level) / 2
    lo, hi = torch.quantile(boot, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return auc, lo, hi


__all__ = ["ReplicationScores", "replication_scores", "replication_rate", "calibrate_threshold",
           "retrieval_precision_recall", "micro_average_precision", "roc_auc", "roc_auc_ci"]
