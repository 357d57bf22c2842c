"""Hard-label memory: label hardness EMA and condition sampling (docs/method.md section 3.3-3.4).

For every attribute j and label value y in {0, 1} the memory keeps ``S_j(y)``,
an exponential moving average of the hardness ``h_ij`` of the training nodes
with that label; likewise ``S_cat(c)`` for every category (docs/method.md sec. 3,
step 3)::

    S_j(y) <- 0.5 * mean_{i: y_ij = y, known}(h_ij) + 0.5 * S_j(y)

updated only for the (j, y) pairs present in the batch. The memory then

- draws conditions for the frozen "bad" generator (step 4, a Decision): the
  category from the pmf ``S_cat / sum S_cat``, and ``positives_per_image``
  distinct positive attributes from the pmf ``S_j(1) / sum_j S_j(1)``, so
  hard labels get more synthetic complementary samples;
- gives the weights ``S_j(y'_ij)`` and ``S_cat(c'_i)`` of eq. 10.

All state lives in tensors on one device and every operation is vectorised
without host synchronisation (no ``.item()``, no Python branch on tensor
values), so it can run every iteration inside a CUDA training step.

Data-parallel training: each rank sees a different batch. To keep the ranks'
memories identical, call :meth:`HardLabelMemory.batch_statistics`, all-reduce
(sum) each tensor of the returned dict, then :meth:`HardLabelMemory.apply_statistics`;
that equals one update with the global batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["HardLabelMemory", "default_positives_per_image"]

# Floor of the scores when turned into a pmf: keeps every label drawable (and
# torch.multinomial valid) even if its hardness has decayed to exactly 0.
_PMF_FLOOR = 1e-12


def default_positives_per_image(total_positives: int, num_images: int) -> int:
    """The training set's mean positives per image, rounded half up, at least 1 (step 4).

    Args:
        total_positives: Number of positive (known) attribute labels in the training set.
        num_images: Number of training images.

    Returns:
        ``max(1, round(total_positives / num_images))``.

    Raises:
        ValueError: If ``num_images`` is not positive or ``total_positives`` is negative.
    """
    if num_images <= 0 or total_positives < 0:
        raise ValueError(
            f"default_positives_per_image: got total_positives={total_positives}, "
            f"num_images={num_images}; pass counts of the training split (num_images > 0)."
        )
    return max(1, math.floor(total_positives / num_images + 0.5))


class HardLabelMemory:
    """EMA memory of label hardness ``S_j(y)``, ``S_cat(c)`` (docs/method.md section 3.3-3.4).

    Attributes:
        num_attributes: ``N``; 0 for a category-only task (MNIST).
        num_categories: ``C``; 0 for an attribute-only task.
        positives_per_image: Positive attributes drawn per synthetic image (0 when N = 0).
        momentum: Weight of the batch mean in the EMA (0.5 in the paper).
        attr_scores: ``[N, 2]`` float32; column y holds ``S_j(y)``.
        cat_scores: ``[C]`` float32 ``S_cat(c)``.
        num_updates: 0-d long tensor counting :meth:`update` calls.
    """

    def __init__(
        self,
        num_attributes: int,
        num_categories: int,
        *,
        momentum: float = 0.5,
        init_value: float = 1.0,
        positives_per_image: int = 1,
        device: torch.device | str | None = None,
        present_attributes: Tensor | None = None,
        present_categories: Tensor | None = None,
    ) -> None:
        """Create a memory with every score of a present label equal to ``init_value``.

        Args:
            num_attributes: Number of binary attributes ``N`` (>= 0).
            num_categories: Number of categories ``C`` (>= 0); N + C must be > 0.
            momentum: Weight of the batch mean in the EMA, in (0, 1].
            init_value: Initial value of every score, > 0 (docs/method.md: all equal).
            positives_per_image: Positives drawn per synthetic image, in [1, N]
                when N > 0 (default the training set's mean, see
                :func:`default_positives_per_image`); ignored and stored as 0 when N = 0.
            device: Device of the state (default CPU).
            present_attributes: ``[N]`` bool, attributes with positives in the training
                split (default: all). The positive score of an absent one starts, and
                stays, at zero: the generator never saw that condition, and a constant
                score that no batch updates would dominate the pmfs.
            present_categories: ``[C]`` bool, categories present in the training split
                (default: all); an absent one's score starts and stays at zero.

        Raises:
            ValueError: On any out-of-range argument; the message names it.
        """
        if num_attributes < 0 or num_categories < 0 or num_attributes + num_categories == 0:
            raise ValueError(
                f"HardLabelMemory: num_attributes={num_attributes}, "
                f"num_categories={num_categories}; both must be >= 0 and at least one > 0 "
                "(use the classifier's head sizes)."
            )
        if not (0.0 < momentum <= 1.0):
            raise ValueError(
                f"HardLabelMemory: argument 'momentum' is {momentum!r}; it must be in (0, 1] "
                "(the paper uses 0.5)."
            )
        if not (0.0 < init_value < float("inf")):
            raise ValueError(
                f"HardLabelMemory: argument 'init_value' is {init_value!r}; it must be a finite "
                "number > 0 (every label starts equally likely)."
            )
        if num_attributes > 0 and not (1 <= positives_per_image <= num_attributes):
            raise ValueError(
                f"HardLabelMemory: argument 'positives_per_image' is {positives_per_image!r}; it "
                f"must be in [1, {num_attributes}] (the training set's mean positives per image, "
                "see default_positives_per_image)."
            )
        self.num_attributes = int(num_attributes)
        self.num_categories = int(num_categories)
        self.positives_per_image = int(positives_per_image) if num_attributes > 0 else 0
        self.momentum = float(momentum)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.attr_scores = torch.full((num_attributes, 2), float(init_value), device=dev)
        self.cat_scores = torch.full((num_categories,), float(init_value), device=dev)
        for name, mask, size in (
            ("present_attributes", present_attributes, num_attributes),
            ("present_categories", present_categories, num_categories),
        ):
            if mask is not None and tuple(mask.shape) != (size,):
                raise ValueError(
                    f"HardLabelMemory: argument {name!r} has shape {tuple(mask.shape)}; it must "
                    f"be ({size},), one flag per label."
                )
        if present_attributes is not None:
            self.attr_scores[:, 1] *= present_attributes.to(dev, torch.float32)
        if present_categories is not None:
            self.cat_scores *= present_categories.to(dev, torch.float32)
        self.num_updates = torch.zeros((), dtype=torch.long, device=dev)

    # ----------------------------------------------------------------- device / state

    @property
    def device(self) -> torch.device:
        """Device the state tensors live on."""
        return self.attr_scores.device

    def to(self, device: torch.device | str) -> HardLabelMemory:
        """Move the state to ``device`` in place.

        Args:
            device: Target device.

        Returns:
            ``self``.
        """
        self.attr_scores = self.attr_scores.to(device)
        self.cat_scores = self.cat_scores.to(device)
        self.num_updates = self.num_updates.to(device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the state tensors, for checkpoints.

        Returns:
            ``{"attr_scores": [N, 2], "cat_scores": [C], "num_updates": []}``.
        """
        return {
            "attr_scores": self.attr_scores.detach().clone(),
            "cat_scores": self.cat_scores.detach().clone(),
            "num_updates": self.num_updates.detach().clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the state saved by :meth:`state_dict` (onto this memory's device).

        Args:
            state: Mapping with keys ``attr_scores``, ``cat_scores``, ``num_updates``.

        Raises:
            ValueError: On a missing key or a shape that does not fit this memory.
        """
        expected = {
            "attr_scores": tuple(self.attr_scores.shape),
            "cat_scores": tuple(self.cat_scores.shape),
            "num_updates": (),
        }
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(
                    f"HardLabelMemory.load_state_dict: key '{key}' is missing (got keys "
                    f"{sorted(state)}); pass a dict saved by HardLabelMemory.state_dict()."
                )
            got = tuple(torch.as_tensor(state[key]).shape)
            if got != shape:
                raise ValueError(
                    f"HardLabelMemory.load_state_dict: '{key}' has shape {got} but this memory "
                    f"expects {shape} (num_attributes={self.num_attributes}, "
                    f"num_categories={self.num_categories}); the checkpoint was made for other "
                    "head sizes. Build the memory with the checkpoint's sizes."
                )
        dev = self.device
        self.attr_scores = torch.as_tensor(state["attr_scores"]).to(dev, torch.float32).clone()
        self.cat_scores = torch.as_tensor(state["cat_scores"]).to(dev, torch.float32).clone()
        self.num_updates = torch.as_tensor(state["num_updates"]).to(dev, torch.long).clone()

    # ----------------------------------------------------------------- update (step 3)

    def batch_statistics(
        self,
        attr_hardness: Tensor | None,
        attr_targets: Tensor | None,
        known: Tensor | None,
        cat_hardness: Tensor | None,
        cat_targets: Tensor | None,
    ) -> dict[str, Tensor]:
        """Per-label sums and counts of a batch's hardness (summable across ranks).

        Args:
            attr_hardness: ``[M, N]`` attribute hardness (e.g. ``node_hardness``) or None.
            attr_targets: ``[M, N]`` 0/1 targets; required with ``attr_hardness``.
            known: ``[M, N]`` bool mask of known labels, None = all known.
            cat_hardness: ``[M]`` category hardness (``category_hardness``) or None.
            cat_targets: ``[M]`` category indices; required with ``cat_hardness``.

        Returns:
            ``attr_sum``/``attr_count`` ``[N, 2]`` and ``cat_sum``/``cat_count`` ``[C]``,
            float32 on this memory's device.

        Raises:
            ValueError: On a missing partner tensor or a shape that does not fit.
        """
        dev = self.device
        n, c = self.num_attributes, self.num_categories
        attr_sum = torch.zeros((n, 2), device=dev)
        attr_count = torch.zeros((n, 2), device=dev)
        cat_sum = torch.zeros((c,), device=dev)
        cat_count = torch.zeros((c,), device=dev)
        if attr_hardness is not None:
            self._check_attr(attr_hardness, attr_targets, known)
            assert attr_targets is not None  # _check_attr raised otherwise
            h = attr_hardness.detach().to(dev, torch.float32)
            pos = attr_targets.detach().to(dev) > 0.5
            u = torch.ones_like(pos) if known is None else known.detach().to(dev, torch.bool)
            zero = torch.zeros_like(h)
            for col, mask in ((0, u & ~pos), (1, u & pos)):
                # torch.where, not h * mask: an unknown node's hardness may be NaN.
                attr_sum[:, col] = torch.where(mask, h, zero).sum(dim=0)
                attr_count[:, col] = mask.sum(dim=0).float()
        if cat_hardness is not None:
            self._check_cat(cat_hardness, cat_targets)
            assert cat_targets is not None  # _check_cat raised otherwise
            hc = cat_hardness.detach().to(dev, torch.float32)
            idx = cat_targets.detach().to(dev, torch.long)
            # index_add_ instead of bincount: bincount syncs to find its length.
            cat_sum.index_add_(0, idx, hc)
            cat_count.index_add_(0, idx, torch.ones_like(hc))
        return {
            "attr_sum": attr_sum,
            "attr_count": attr_count,
            "cat_sum": cat_sum,
            "cat_count": cat_count,
        }

    def apply_statistics(self, stats: dict[str, Tensor]) -> None:
        """EMA step from (possibly all-reduced) :meth:`batch_statistics` output.

        ``S <- m * sum / count + (1 - m) * S`` where ``count > 0``; untouched
        elsewhere (pairs absent from the batch keep their score).

        Args:
            stats: Dict returned by :meth:`batch_statistics`.
        """
        m = self.momentum

        def ema(score: Tensor, total: Tensor, count: Tensor) -> Tensor:
            total, count = total.to(score.device), count.to(score.device)
            mean = total / count.clamp_min(1.0)
            return torch.where(count > 0, m * mean + (1.0 - m) * score, score)

        self.attr_scores = ema(self.attr_scores, stats["attr_sum"], stats["attr_count"])
        self.cat_scores = ema(self.cat_scores, stats["cat_sum"], stats["cat_count"])
        self.num_updates = self.num_updates + 1

    def update(
        self,
        attr_hardness: Tensor | None,
        attr_targets: Tensor | None,
        known: Tensor | None,
        cat_hardness: Tensor | None,
        cat_targets: Tensor | None,
    ) -> None:
        """One EMA step with a training batch's hardness (step 3). Inputs are detached.

        Args:
            attr_hardness: ``[M, N]`` attribute hardness or None.
            attr_targets: ``[M, N]`` 0/1 targets; required with ``attr_hardness``.
            known: ``[M, N]`` bool mask, None = all known; unknown nodes are ignored.
            cat_hardness: ``[M]`` category hardness or None.
            cat_targets: ``[M]`` category indices; required with ``cat_hardness``.
        """
        self.apply_statistics(
            self.batch_statistics(attr_hardness, attr_targets, known, cat_hardness, cat_targets)
        )

    # ----------------------------------------------------------------- sampling (step 4)

    def attribute_pmf(self) -> Tensor:
        """``S_j(1) / sum_j S_j(1)``: the pmf positive attributes are drawn from.

        Returns:
            ``[N]`` float32 summing to 1 (empty when N = 0).
        """
        p = self.attr_scores[:, 1].clamp_min(_PMF_FLOOR)
        return p / p.sum()

    def category_pmf(self) -> Tensor:
        """``S_cat(c) / sum_c S_cat(c)``: the pmf categories are drawn from.

        Returns:
            ``[C]`` float32 summing to 1 (empty when C = 0).
        """
        p = self.cat_scores.clamp_min(_PMF_FLOOR)
        return p / p.sum()

    def sample_conditions(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` generator conditions from the memory (step 4, docs/method.md Decision).

        Args:
            n: Number of synthetic images.
            generator: Optional RNG on this memory's device, for reproducible draws.

        Returns:
            ``(cat_idx, attr_multi_hot)``: ``[n]`` long category indices (all -1
            when C = 0) and ``[n, N]`` float32 rows with exactly
            ``positives_per_image`` distinct ones each.

        Raises:
            ValueError: If ``n`` is negative.
        """
        if n < 0:
            raise ValueError(
                f"HardLabelMemory.sample_conditions: argument 'n' is {n}; pass the synthetic "
                "batch size (>= 0)."
            )
        dev = self.device
        if self.num_categories > 0 and n > 0:
            cat_idx = torch.multinomial(
                self.category_pmf(), n, replacement=True, generator=generator
            )
        else:
            cat_idx = torch.full((n,), -1, dtype=torch.long, device=dev)
        attrs = torch.zeros((n, self.num_attributes), device=dev)
        if self.num_attributes > 0 and n > 0:
            pmf = self.attribute_pmf().unsqueeze(0).expand(n, -1)
            picks = torch.multinomial(
                pmf, self.positives_per_image, replacement=False, generator=generator
            )
            attrs.scatter_(1, picks, 1.0)
        return cat_idx, attrs

    def condition_weights(self, cat_idx: Tensor, attr_multi_hot: Tensor) -> tuple[Tensor, Tensor]:
        """Weights of eq. 10 for sampled conditions: ``S_j(y'_ij)`` and ``S_cat(c'_i)``.

        Args:
            cat_idx: ``[n]`` sampled category indices (ignored when C = 0).
            attr_multi_hot: ``[n, N]`` sampled 0/1 attribute labels.

        Returns:
            ``(attr_weights [n, N], cat_weights [n])`` float32 constants; the
            category weights are 0 when C = 0.

        Raises:
            ValueError: If the shapes do not fit this memory.
        """
        n = cat_idx.shape[0] if cat_idx.dim() == 1 else -1
        if n < 0 or attr_multi_hot.shape != (n, self.num_attributes):
            raise ValueError(
                f"HardLabelMemory.condition_weights: got cat_idx {tuple(cat_idx.shape)} and "
                f"attr_multi_hot {tuple(attr_multi_hot.shape)}; expected [n] and "
                f"[n, {self.num_attributes}] as returned by sample_conditions()."
            )
        y = attr_multi_hot.to(self.device) > 0.5
        attr_w = torch.where(y, self.attr_scores[:, 1], self.attr_scores[:, 0])
        if self.num_categories > 0:
            cat_w = self.cat_scores[cat_idx.to(self.device, torch.long)]
        else:
            cat_w = torch.zeros((n,), device=self.device)
        return attr_w.clone(), cat_w

    # ----------------------------------------------------------------- checks

    def _check_attr(self, h: Tensor, targets: Tensor | None, known: Tensor | None) -> None:
        shape = (h.shape[0], self.num_attributes) if h.dim() == 2 else None
        if shape is None or tuple(h.shape) != shape:
            raise ValueError(
                f"HardLabelMemory.update: argument 'attr_hardness' has shape {tuple(h.shape)}; "
                f"expected [M, {self.num_attributes}] (one hardness per attribute node)."
            )
        if targets is None or tuple(targets.shape) != shape:
            got = None if targets is None else tuple(targets.shape)
            raise ValueError(
                f"HardLabelMemory.update: argument 'attr_targets' is {got}; expected shape "
                f"{shape} like 'attr_hardness'."
            )
        if known is not None and tuple(known.shape) != shape:
            raise ValueError(
                f"HardLabelMemory.update: argument 'known' has shape {tuple(known.shape)}; "
                f"expected {shape} like 'attr_hardness', or None when all labels are known."
            )

    def _check_cat(self, h: Tensor, targets: Tensor | None) -> None:
        if self.num_categories == 0:
            raise ValueError(
                "HardLabelMemory.update: 'cat_hardness' was given but this memory has "
                "num_categories=0; pass cat_hardness=None or build it with the category count."
            )
        if h.dim() != 1:
            raise ValueError(
                f"HardLabelMemory.update: argument 'cat_hardness' has shape {tuple(h.shape)}; "
                "expected [M] (one hardness per image)."
            )
        if targets is None or tuple(targets.shape) != tuple(h.shape):
            got = None if targets is None else tuple(targets.shape)
            raise ValueError(
                f"HardLabelMemory.update: argument 'cat_targets' is {got}; expected shape "
                f"{tuple(h.shape)} like 'cat_hardness' (integer category indices)."
            )

    def __repr__(self) -> str:
        return (
            f"HardLabelMemory(num_attributes={self.num_attributes}, "
            f"num_categories={self.num_categories}, momentum={self.momentum}, "
            f"positives_per_image={self.positives_per_image}, device={self.device})"
        )
