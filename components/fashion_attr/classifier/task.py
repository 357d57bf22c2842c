"""The classification task: one object that turns a batch into the training objective.

``L = L_real + lambda * L_SC`` (eq. 11), where ``L_real`` is the configured
loss (HABP by default, eq. 1-4; or a baseline) and ``L_SC`` the Deact loss on
synthetic complementary images (eq. 10), computed every ``deact.every``
iterations. The training loop only calls :meth:`ClassifierTask.step_loss`.

Decisions taken here (documented in docs/method.md sections 1, 3.3 and 3.7):

- **HABP normaliser under DDP is global**: the weight sum is all-reduced over
  ranks, so multi-GPU training optimises exactly the single-process objective
  over the global batch (``loss.normalizer=local`` keeps it per rank).
- **Memory updates are global**: per-label hardness sums and counts are
  all-reduced before the EMA step, so every rank holds the same memory and
  samples conditions from the same pmfs.
- **Real and synthetic images share one forward pass** (concatenated batch) on
  Deact steps: one pass is faster and keeps DDP's one-forward-one-backward
  contract. On networks with batch norm the synthetic images then take part in
  that step's batch statistics (a share of M'/(M+M') every ``every`` steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from fashion_attr.classifier.deact import DeactLoss
from fashion_attr.config import ClassifierConfig
from fashion_attr.losses import (
    LabelCounts,
    build_loss,
    category_hardness,
    habp_terms,
    node_hardness,
)
from fashion_attr.runtime import DistContext

__all__ = ["ClassifierTask", "StepTerms"]


@dataclass
class StepTerms:
    """Detached loss terms of one step (tensors; reading them syncs the device)."""

    total: Tensor
    real: Tensor
    sc: Tensor | None
    synthetic: int


class ClassifierTask:
    """Computes the training objective of one step.

    Args:
        cfg: the classifier config (loss and Deact sections are used).
        train_pos_counts: per-attribute positives in the train split.
        train_neg_counts: per-attribute negatives in the train split.
        num_train: number of train images (for attribute priors).
        ctx: distributed context (for the global normaliser and memory sync).
        deact: the Deact loss (owns the frozen generator and the memory), or None.
        device: training device.
    """

    def __init__(
        self,
        cfg: ClassifierConfig,
        train_pos_counts: Tensor,
        train_neg_counts: Tensor,
        num_train: int,
        ctx: DistContext,
        deact: DeactLoss | None,
        device: torch.device,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.deact = deact
        self.memory = deact.memory if deact is not None else None
        counts = LabelCounts(
            pos=train_pos_counts.to(device, torch.float32),
            neg=train_neg_counts.to(device, torch.float32),
            num_train=num_train,
        )
        self.loss = build_loss(cfg.loss, counts)

    def is_deact_step(self, step: int) -> bool:
        """Deact runs on iterations ``every, 2*every, ...`` (1-based step numbers)."""
        return (
            self.deact is not None
            and self.cfg.deact.lambda_ > 0
            and step % self.cfg.deact.every == 0
        )

    def real_loss(
        self,
        attr_logits: Tensor,
        cat_logits: Tensor,
        targets: Tensor,
        known: Tensor,
        category: Tensor,
    ) -> Tensor:
        """The configured loss on real images (eq. 1-4 for HABP)."""
        attr = attr_logits if attr_logits.shape[1] > 0 else None
        cat = cat_logits if cat_logits.shape[1] > 0 else None
        tgt = targets if attr is not None else None
        kn = known if attr is not None else None
        ct = category if cat is not None else None
        if self.loss.name != "habp":
            return self.loss(attr, tgt, kn, cat, ct)
        # HABP's normaliser is a sum over the batch: under DDP it is all-reduced (below).
        num, den = habp_terms(attr, tgt, kn, cat, ct, **self.loss.kwargs)
        if self.ctx.world_size > 1 and self.cfg.loss.normalizer == "global":
            # DDP averages gradients over ranks, so scale by world size: the
            # result is the gradient of sum(num_r) / sum(den_r) (see habp_terms).
            den = self.ctx.all_reduce_sum(den.detach().clone())
            return num * self.ctx.world_size / den.clamp_min(1e-8)
        return num / den.clamp_min(1e-8)

    @torch.no_grad()
    def update_memory(
        self,
        attr_logits: Tensor,
        cat_logits: Tensor,
        targets: Tensor,
        known: Tensor,
        category: Tensor,
    ) -> None:
        """EMA of label hardness from a real batch (docs/method.md section 3, step 3)."""
        if self.memory is None:
            return
        gamma = self.cfg.loss.gamma
        has_attr = attr_logits.shape[1] > 0
        has_cat = cat_logits.shape[1] > 0
        stats = self.memory.batch_statistics(
            node_hardness(attr_logits.float(), targets, gamma) if has_attr else None,
            targets if has_attr else None,
            known if has_attr else None,
            category_hardness(cat_logits.float(), category, gamma) if has_cat else None,
            category if has_cat else None,
        )
        if self.ctx.world_size > 1:
            for value in stats.values():
                self.ctx.all_reduce_sum(value)
        self.memory.apply_statistics(stats)

    def step_loss(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        known: Tensor,
        category: Tensor,
        step: int,
    ) -> StepTerms:
        """Forward the batch (plus a synthetic batch on Deact steps); return the objective.

        Args:
            model: the (possibly DDP-wrapped) classifier.
            images: normalised real images on the device.
            targets: ``[M, N]`` 0/1 attribute targets.
            known: ``[M, N]`` known-label mask.
            category: ``[M]`` category indices.
            step: 1-based iteration number.

        Returns:
            :class:`StepTerms`; ``total`` carries the graph for ``backward``.
        """
        # The fa.* regions name the step's phases in torch.profiler traces
        # (bench/throughput.py --profile); outside a profiler they cost microseconds.
        m = images.shape[0]
        synth = None
        if self.is_deact_step(step):
            assert self.deact is not None
            with record_function("fa.deact_synthesize"):
                if self.deact.source == "noise":
                    # The no-generator control matches its noise to this real batch.
                    self.deact.match_statistics(images)
                synth = self.deact.synthesize(self.cfg.deact.batch_size or m)
                images = torch.cat([images, synth.images.to(images.dtype)], dim=0)
        with record_function("fa.forward"):
            attr_logits, cat_logits = model(images)
        with record_function("fa.real_loss"):
            real = self.real_loss(attr_logits[:m], cat_logits[:m], targets, known, category)
        with record_function("fa.memory_update"):
            self.update_memory(
                attr_logits[:m].detach(), cat_logits[:m].detach(), targets, known, category
            )
        if synth is None:
            return StepTerms(total=real, real=real.detach(), sc=None, synthetic=0)
        assert self.deact is not None
        with record_function("fa.deact_loss"):
            sc = self.deact.loss(attr_logits[m:], cat_logits[m:], synth)
        total = real + self.cfg.deact.lambda_ * sc  # eq. 11
        return StepTerms(
            total=total, real=real.detach(), sc=sc.detach(), synthetic=synth.images.shape[0]
        )
