"""Method diverse_head's torch class: DiverseHead (DiverseNet, Ma, Karakus and Rosin, arXiv 2311.13716). Its spec,
knobs and checks are the package's `__init__`; the heads themselves are `selftune.trainable.heads` (built from the
spec's `heads`, so every model of such a config has them and predicts with their mean).

Per step (the official `DiverseHead_DF.py` / `DiverseHead_DT.py`, with the choices named in docs/methods.md):
- `before_step`: from `freeze_start`, `frozen_heads(cfg)` heads drawn afresh are frozen for the step (no gradient
  reaches their weights, their BatchNorm layers normalise with the batch's statistics but do not update their
  running ones); the heads that learn from the pseudo-labels are drawn among the others; the heads' dropout gets
  the step's own stream.
- the supervised loss is the mean of every head's (`Method.supervised_loss`);
- `unlabeled_loss`: the student's own forward on the unlabelled batch (all heads, dropout on) gives the pseudo-label
  (`diverse_pseudo_labels`, no gradient), and the drawn heads' mean loss against it is the unlabelled loss, weighted
  by the shared `st_weight` ramp. No teacher pass: the loop's EMA model is still kept and scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from selftune.data import derive_seed
from selftune.trainable import functional
from selftune.trainable.heads import MultiHead, agreement, head_classes, head_logits, multi_head
from selftune.trainable.methods.base import Method, PseudoBatch
from selftune.trainable.methods.diverse_head import SPEC, frozen_heads

if TYPE_CHECKING:
    from selftune.trainable.config import TrainConfig

# The heads' random stream (which heads are frozen and which learn from the pseudo-labels; their dropout masks),
# beside loop.py's streams 0-3 and s4gan's 4.
STREAM_HEADS = 5
_DRAW, _DROPOUT = 0, 1


# ---------------------------------------------------------------------------- pure functions


def diverse_pseudo_labels(logits: torch.Tensor, vote_weight: float) -> torch.Tensor:
    """DiverseHead's pseudo-label of every pixel, int64 [B, H, W], from every head's logits [B, N, K, H, W]: the
    argmax over classes of `vote_weight` x one-hot(the class of the heads' summed logits) + the number of heads whose
    own class it is (the official code's `VoteModule`, w = 5). Ties go to the lower class index. A binary model's one
    channel counts as two classes (logit > 0: class 1)."""
    b, _, k, h, w = logits.shape
    classes = max(k, 2)
    votes = torch.zeros(b, classes, h, w, device=logits.device)
    heads = head_classes(logits)  # [B, N, H, W]
    votes.scatter_add_(1, heads, torch.ones_like(heads, dtype=votes.dtype))
    summed = head_classes(logits.float().sum(dim=1)).unsqueeze(1)  # [B, 1, H, W]
    votes.scatter_add_(1, summed, torch.full_like(summed, vote_weight, dtype=votes.dtype))
    return votes.argmax(dim=1)


def set_frozen(head: nn.Module, frozen: bool) -> None:
    """Freeze or free one head: no gradient to its parameters (so no optimizer moves them, weight decay and momentum
    included) and no update of its BatchNorm running statistics (which still normalise with the batch's in training)."""
    for p in head.parameters():
        p.requires_grad_(not frozen)
    for m in head.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = not frozen


# ---------------------------------------------------------------------------- the method


class DiverseHead(Method):
    """DiverseHead: N heads on one network label the unlabelled batch together; a random head learns from it.

    Its window metrics: `head_agreement` (mean share of the heads whose class is the pseudo-label, on unlabelled
    pixels: 1 means the heads have collapsed into one), `vote_changed` (share of unlabelled pixels where the vote
    overrode the summed logits' class) and `frozen_heads` (heads frozen at the last step).
    """

    spec = SPEC

    def __init__(self, cfg: TrainConfig, num_classes: int, class_prior: Sequence[float] | None = None):
        super().__init__(cfg, num_classes, class_prior)
        self.frozen: tuple[int, ...] = ()  # the heads frozen at this step
        self.learners: tuple[int, ...] = ()  # the heads that learn from the pseudo-labels at this step
        self._new_window()

    def _new_window(self) -> None:
        self.agreement_sum: Any = 0.0  # on the device until window_metrics reads it
        self.changed_sum: Any = 0.0
        self.batches = 0

    def thresholds_at(self, it: int) -> list[float]:
        """No threshold: every pixel of the vote is a pseudo-label (the loop's threshold/<class> metrics show 0)."""
        return [0.0] * self.num_classes

    def before_step(self, student: torch.nn.Module, it: int) -> None:
        """Draw this step's frozen heads (from freeze_start) and the heads that learn from the pseudo-labels among
        the others, freeze them, and seed the heads' dropout; all from the run's seed and `it` (exact resume)."""
        heads = _heads_of(student)
        n, c = len(heads.heads), self.cfg
        draw = torch.Generator().manual_seed(derive_seed(c.seed, STREAM_HEADS, _DRAW, it))
        frozen = torch.randperm(n, generator=draw)[: frozen_heads(c)].tolist() if it >= c.freeze_start else []
        self.frozen = tuple(sorted(frozen))
        for i, head in enumerate(heads.heads):
            set_frozen(head, i in self.frozen)
        free = [i for i in range(n) if i not in self.frozen]
        pick = torch.randperm(len(free), generator=draw)[: c.unlabeled_heads].tolist()
        self.learners = tuple(sorted(free[j] for j in pick))
        if c.head_dropout > 0:
            device = next(student.parameters()).device
            heads.set_generator(torch.Generator(device).manual_seed(derive_seed(c.seed, STREAM_HEADS, _DROPOUT, it)))

    @torch.no_grad()
    def pseudo_batch(self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, generator: torch.Generator
                     ) -> PseudoBatch:
        """The unlabelled batch as it is; its labels come from the student's own forward (`unlabeled_loss`)."""
        b, _, h, w = images_u.shape
        empty = torch.zeros(self.num_classes, dtype=torch.int64, device=images_u.device)
        labels = torch.full((b, h, w), self.cfg.ignore_index, dtype=torch.int64, device=images_u.device)
        return PseudoBatch(images_u, labels, empty, empty.clone())

    def unlabeled_loss(self, logits_u: torch.Tensor, batch: PseudoBatch, loss_fn: functional.SegmentationLoss
                       ) -> torch.Tensor:
        """The heads' vote on the student's logits `logits_u` [B, N, K, H, W] is the pseudo-label (filled into
        `batch`); the loss is the mean of the drawn heads' losses against it."""
        with torch.no_grad():
            detached = logits_u.detach()
            labels = diverse_pseudo_labels(detached, self.cfg.vote_weight)
            pl = functional.PseudoLabels(labels, torch.ones_like(labels, dtype=torch.bool), torch.ones_like(
                labels, dtype=torch.float32), labels)
            batch.labels = labels
            batch.accepted, batch.predicted = functional.pseudo_label_counts(pl, self.num_classes)
            self.agreement_sum = self.agreement_sum + agreement(detached, labels).mean()
            self.changed_sum = self.changed_sum + (head_classes(detached.float().sum(dim=1)) != labels).float().mean()
            self.batches += 1
        return torch.stack([loss_fn(logits_u[:, i], labels) for i in self.learners]).mean()

    @torch.no_grad()
    def label(self, teacher: torch.nn.Module, images_u: torch.Tensor, it: int, *, update: bool = True
              ) -> functional.PseudoLabels:
        """The vote of `teacher`'s heads (the TensorBoard panel's pseudo-labels: the EMA model's)."""
        labels = diverse_pseudo_labels(head_logits(teacher, images_u).float(), self.cfg.vote_weight)
        return functional.PseudoLabels(labels, torch.ones_like(labels, dtype=torch.bool),
                                       torch.ones_like(labels, dtype=torch.float32), labels)

    def window_metrics(self) -> dict[str, float]:
        n = self.batches
        out = {"frozen_heads": float(len(self.frozen)),  # NaN before self-training starts
               "head_agreement": float(self.agreement_sum) / n if n else float("nan"),
               "vote_changed": float(self.changed_sum) / n if n else float("nan")}
        self._new_window()
        return out


def _heads_of(model: torch.nn.Module) -> MultiHead:
    heads = multi_head(model)
    if heads is None:
        raise TypeError("method diverse_head needs a model built for it (build_model with its config): it has no heads")
    return heads


__all__ = ["STREAM_HEADS", "DiverseHead", "diverse_pseudo_labels", "set_frozen"]
