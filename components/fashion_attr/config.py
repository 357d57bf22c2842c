"""Configuration as data: one frozen pydantic model per pipeline step.

A step's configuration is resolved in this order, later winning:

1. the model's defaults,
2. a named preset shipped with the package (``presets/<name>.yaml``; section
   per step: ``train_gan``, ``train_classifier``, ``evaluate``, ``register``),
3. a user YAML file (``--config``; same layout as a preset, or the step's
   section alone),
4. ``--set key=value`` overrides (dotted keys into nested models; values
   parsed as YAML, so ``--set deact.enabled=false`` and ``--set lr=1e-3`` work).

Unknown keys and wrong types fail before any work, with a message naming the
field and the allowed values. The resolved config is saved next to every
output (checkpoints, exported models), so each artifact says how it was made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "PRESETS",
    "ClassifierConfig",
    "ConfigError",
    "DeactConfig",
    "EvaluateConfig",
    "GanConfig",
    "LossConfig",
    "PreprocessConfig",
    "RegisterConfig",
    "load_config",
    "parse_overrides",
]

PRESETS = ("tiny", "mnist", "paper", "paper-cb")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]


class PreprocessConfig(_Frozen):
    """``preprocess``: validate, crop and shard DeepFashion-C (the ingest step)."""

    image_size: int = Field(224, ge=8, description="Side of the stored crops (px).")
    jpeg_quality: int = Field(90, ge=1, le=100)
    shard_max_samples: int = Field(1000, ge=1)
    shard_max_bytes: int = Field(64 << 20, ge=1 << 16)
    workers: int = Field(1, ge=1)
    seed: int = 0
    rehash: bool = Field(
        False,
        description="Hash every source image again instead of trusting the fingerprint cache "
        "(a same-size change with its modification time restored is then seen).",
    )
    max_skipped_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Refuse a catalog batch when more of its records than this share name a "
        "missing or undecodable image (a policy; duplicates do not count).",
    )


class GanQualityConfig(_Frozen):
    """How ``train_gan`` measures its samples (:mod:`fashion_attr.gan.quality`).

    The probe draws ``draws`` pairs of disjoint real sets of ``samples`` images each from
    the held-out split (``val``), and reports the generator's Fréchet distance with its
    spread beside the real-vs-real floor over the same draws. ``paper_samples`` and
    ``last_epochs`` add the paper's protocol (docs/method.md section 4).
    """

    enabled: bool = Field(True, description="Measure FD and diversity at the end of training.")
    every_epochs: int = Field(0, ge=0, description="Also every N epochs (0: only at the end).")
    samples: int = Field(1000, ge=2, description="Images per real and generated set per draw.")
    draws: int = Field(
        3,
        ge=1,
        description="Disjoint real-set pairs drawn from the held-out split: the generator's FD "
        "and the real-vs-real floor are the mean and spread over them.",
    )
    inception_weights: str | None = Field(
        None,
        description="Local Inception weights file (no download): FID with inception_kind "
        "tf_fid. None: no FID, the classifier FD instead.",
    )
    inception_kind: Literal["tf_fid", "torchvision"] = Field(
        "tf_fid",
        description="tf_fid: the TF FID Inception of published FIDs (torch-fidelity's network, "
        "its or pytorch-fid's weights file), logged as 'fid'. torchvision: a torchvision "
        "inception_v3 state dict, logged as 'fd_inception_tv' (not FID).",
    )
    paper_samples: int = Field(
        0,
        ge=0,
        description="The paper's protocol: FD of this many generated images (labels from the "
        "train prior) against the whole held-out split, logged as '<key>_paper' (paper: "
        "30000; 0: off).",
    )
    last_epochs: int = Field(
        0,
        ge=0,
        description="Also measure at the end of each of the last K epochs and log the "
        "smallest '<key>_paper' as '<key>_paper_min' (paper: 10; 0: off).",
    )
    feature_steps: int = Field(300, ge=1, description="Training steps of the FD classifier.")
    feature_size: int = Field(64, ge=16, description="Side (px) the FD classifier sees.")
    seed: int = Field(
        0, description="Seeds the FD classifier and the noise: runs on one dataset compare."
    )

    @model_validator(mode="after")
    def _last_epochs_need_paper(self) -> GanQualityConfig:
        if self.last_epochs and not self.paper_samples:
            raise ValueError(
                f"last_epochs={self.last_epochs} takes the smallest '<key>_paper' figure, which "
                "paper_samples=0 turns off. Fix: set paper_samples (the paper's 30000) or "
                "last_epochs=0"
            )
        return self


class GanConfig(_Frozen):
    """``train_gan``: the conditional MR-GAN with decorrelation (docs/method.md section 4)."""

    image_size: int = Field(224, ge=8, description="Highest pyramid resolution (px).")
    base_size: int = Field(7, ge=2, description="Lowest pyramid resolution (px).")
    z_dim: int = Field(128, ge=1, description="Noise dimensions N_Z.")
    top_channels: int = Field(32, ge=1, description="Channels at image_size; doubled per halving.")
    max_channels: int = Field(512, ge=1, description="Channel cap.")
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(30, ge=1)
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (a sample budget; tests)."
    )
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    dc_weight: float = Field(
        0.0,
        ge=0,
        description="Decorrelation loss weight (eq. 7-8); 0 turns it off (docs/results.md "
        "'Decorrelation'). The paper's value is 2e-6 (inert with dc_reduction=mean).",
    )
    dc_reduction: Literal["mean", "sum"] = Field(
        "mean",
        description="mean: eq. 7-8 as written, divided by N_F * N_Z^2. sum: the unnormalised "
        "sum of squared cosines, the reading under which the paper's 2e-6 acts (it equals "
        "mean with weight 2e-6 * N_F * N_Z^2).",
    )
    ema: bool = Field(False, description="Keep an EMA copy of G and export it.")
    ema_decay: float = Field(0.999, gt=0, lt=1)
    sigma_p: float = Field(1.5, ge=0, description="Perturbation shown in the 'bad' sample grid.")
    checkpoint_every: int = Field(
        200, ge=1, description="Checkpoint every N steps (and per epoch)."
    )
    sample_grid_every_epoch: bool = True
    quality: GanQualityConfig = GanQualityConfig()
    num_workers: int = Field(2, ge=0)
    precision: Precision = "auto"
    channels_last: bool = True
    device: Device = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _pyramid(self) -> GanConfig:
        size = self.base_size
        while size < self.image_size:
            size *= 2
        if size != self.image_size:
            raise ValueError(
                f"image_size={self.image_size} must be base_size={self.base_size} times a power "
                "of two (e.g. 7 -> 224, 7 -> 28, 4 -> 32)"
            )
        return self


class LossConfig(_Frozen):
    """Loss selection for the real batches (docs/method.md sections 1-2)."""

    name: Literal["ce", "focal", "weighted_focal", "ohem", "wce_a", "wce_b", "asl", "habp"] = "habp"
    gamma: float = Field(1.2, ge=0, description="Hardness exponent (HABP, focal).")
    base: Literal["bce", "wce_b"] = Field(
        "bce", description="Base loss under HABP; wce_b is the paper's class-balanced setting."
    )
    detach_weights: bool = True
    ohem_ratio: float = Field(0.17, gt=0, le=1)
    normalizer: Literal["global", "local"] = Field(
        "global",
        description="HABP normaliser under DDP: all-reduced over ranks (global) or per rank.",
    )


class DeactConfig(_Frozen):
    """Deact: deactivation on synthetic complementary samples (docs/method.md section 3).

    ``centered`` is the legacy spelling of ``form`` (true: ``centered``, false: ``raw``);
    when given, it wins over ``form``.
    """

    enabled: bool = True
    lambda_: float = Field(1e-4, ge=0, alias="lambda", description="Weight of L_SC (eq. 11).")
    every: int = Field(20, ge=1, description="Compute L_SC every N iterations.")
    sigma_p: float = Field(1.5, ge=0, description="Std of the generator perturbation.")
    batch_size: int | None = Field(None, ge=1, description="Synthetic batch; default = real.")
    threshold: float = Field(-4.6, description="T of the multi-class deactivation (eq. 5).")
    form: Literal["centered", "log_softmax", "raw"] = Field(
        "centered",
        description="Reading of eq. 5 on the softmax head (docs/method.md section 3.5): "
        "centered (a confidence penalty on centred logits), log_softmax (every class "
        "probability below max(e^T, 1/C)) or raw (the paper's literal form).",
    )
    source: Literal["generator", "noise"] = Field(
        "generator",
        description="Images L_SC is computed on: the frozen, perturbed generator's (Deact), "
        "or Gaussian noise with each real batch's per-channel mean and std (the "
        "no-generator control; needs no generator).",
    )
    memory_momentum: float = Field(0.5, gt=0, lt=1)
    positives_per_image: int | None = Field(
        None, ge=1, description="Default: train mean positives per image, rounded, >= 1."
    )

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _legacy_centered(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "centered" in data:
            data = dict(data)
            centered = data.pop("centered")
            if not isinstance(centered, bool):
                raise ValueError(
                    f"centered={centered!r}: expected true or false (legacy spelling of form: "
                    "true = centered, false = raw)"
                )
            data["form"] = "centered" if centered else "raw"
        return data

    @property
    def centered(self) -> bool:
        """Legacy view of ``form``: True for the centred reading."""
        return self.form == "centered"


class ClassifierConfig(_Frozen):
    """``train_classifier``: HABP (+ Deact with the frozen generator)."""

    arch: Literal["vgg16_paper", "resnet50", "tiny", "lenet5"] = "vgg16_paper"
    pretrained: str | None = Field(
        "imagenet", description="'imagenet', a local weights path, or null for random init."
    )
    image_size: int = Field(224, ge=8)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(15, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_milestones: tuple[int, ...] = Field((6, 9, 12), description="Epochs where lr /= 10.")
    lr_gamma: float = Field(0.1, gt=0)
    loss: LossConfig = LossConfig()
    deact: DeactConfig = DeactConfig()
    flip: bool = False
    random_resized_crop: float | None = Field(None, gt=0, le=1)
    whole_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of train images shown in their whole-image frame (serving whole "
        "photos); the rest are garment crops.",
    )
    checkpoint_every: int = Field(500, ge=1)
    export: Literal["best", "last"] = "best"
    select_metric: str = Field("attr_recall@3/all", description="Metric for export=best.")
    num_workers: int = Field(4, ge=0)
    precision: Precision = "auto"
    channels_last: bool = True
    compile: bool = False
    device: Device = "auto"
    seed: int = 0
    eval_batch_size: int = Field(64, ge=1)

    @field_validator("lr_milestones")
    @classmethod
    def _sorted(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if list(v) != sorted(v):
            raise ValueError("lr_milestones must be increasing epochs, e.g. [6, 9, 12]")
        return v


class EvaluateConfig(_Frozen):
    """``evaluate``: test-split metrics and reports (docs/method.md section 6)."""

    batch_size: int = Field(64, ge=1)
    tail_threshold: int = Field(100, ge=1, description="Tail = fewer train positives than this.")
    ks: tuple[int, ...] = (3, 5)
    num_workers: int = Field(2, ge=0)
    device: Device = "auto"
    split: Literal["test", "val"] = "test"
    whole_images: int = Field(
        1000,
        ge=0,
        description="Also score up to this many whole source photos of the split, as served "
        "without a bbox (metrics 'whole/...'); 0: crops only.",
    )


class RegisterConfig(_Frozen):
    """``register``: MLflow model registration and the promotion gate."""

    model_name: str = Field("fashion-attr", min_length=1)
    gate_metrics: tuple[str, ...] = (
        "attr_recall@3/all",
        "attr_recall@3/tail",
        "cat_top3_acc",
    )
    tolerance: float = Field(0.005, ge=0, description="Allowed drop per gated metric.")
    tie_rule: Literal["promote", "keep"] = Field(
        "promote",
        description="Challenger within tolerance on every metric: promote (fresher data) or keep.",
    )
    on_incomparable: Literal["keep", "promote"] = Field(
        "keep",
        description=(
            "When the champion cannot be scored on the challenger's test split (another label "
            "layout, an unreadable artifact): keep it (promote by hand) or promote."
        ),
    )
    attribute_threshold: float = Field(0.5, gt=0, lt=1)
    top_k: int = Field(3, ge=1)


_SECTIONS: dict[type[BaseModel], str] = {
    PreprocessConfig: "preprocess",
    GanConfig: "train_gan",
    ClassifierConfig: "train_classifier",
    EvaluateConfig: "evaluate",
    RegisterConfig: "register",
}

T = TypeVar("T", bound=BaseModel)


def _preset_data(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}. Fix: use one of {', '.join(PRESETS)}")
    text = resources.files("fashion_attr").joinpath("presets", f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _deep_merge(base: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict, values parsed as YAML.

    Raises:
        ConfigError: for an item without ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} has no '='. Fix: write it as key=value")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _section(data: Mapping[str, Any], section: str) -> dict[str, Any]:
    """A file may hold all step sections, or the step's section alone."""
    if any(k in data for k in _SECTIONS.values()):
        return dict(data.get(section) or {})
    return dict(data)


def _key_lines(text: str, section: str) -> dict[str, int]:
    """1-based line of every (dotted) key of a config file's step section, for messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    top = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    if any(name in top for name in _SECTIONS.values()):
        node = top.get(section)
    out: dict[str, int] = {}

    def walk(n: Any, prefix: str) -> None:
        if not isinstance(n, yaml.MappingNode):
            return
        for k, v in n.value:
            if isinstance(k, yaml.ScalarNode):
                name = prefix + str(k.value)
                out[name] = k.start_mark.line + 1
                walk(v, name + ".")

    walk(node, "")
    return out


def _flat_keys(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys.add(prefix + str(key))
        if isinstance(value, Mapping):
            keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def _format_validation(
    model: type[BaseModel],
    err: ValidationError,
    source: str,
    file_lines: Mapping[str, int] | None = None,
    file_name: str | None = None,
    later_keys: set[str] | None = None,
) -> str:
    lines = [f"invalid {_SECTIONS.get(model, model.__name__)} config ({source}):"]
    for e in err.errors():
        parts = [str(p) for p in e["loc"]]
        loc = ".".join(parts) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(_allowed_fields(model, e["loc"][:-1])))
            msg = f"unknown field. Fix: use one of: {allowed}"
        elif parts:
            msg = f"{msg} (got {e.get('input')!r})"
        # Name the file line where the bad value was written (unless --set replaced it).
        where = ""
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if later_keys and key in later_keys:
                break
            if file_lines and key in file_lines:
                where = f" [{file_name}, line {file_lines[key]}]"
                break
        lines.append(f"  - {loc}: {msg}{where}")
    return "\n".join(lines)


def _allowed_fields(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    current: Any = model
    for part in loc:
        field = current.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type):
            return []
        current = field.annotation
    names = []
    for name, field in current.model_fields.items():
        names.append(field.alias or name)
    return names


def load_config(
    model: type[T],
    *,
    preset: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> T:
    """Resolve a step's configuration (defaults < preset < file < overrides).

    Args:
        model: the step's config class, e.g. :class:`ClassifierConfig`.
        preset: a shipped preset name (``tiny``, ``mnist``, ``paper``, ``paper-cb``).
        config_file: a YAML file with the step's section or all sections.
        overrides: ``key=value`` strings (dotted keys for nested fields).
        extra: values set by the caller (highest precedence), e.g. from CLI flags.

    Returns:
        The frozen, validated config.

    Raises:
        ConfigError: naming every bad field and what it accepts.
    """
    section = _SECTIONS[model]
    data: dict[str, Any] = {}
    sources = []
    file_lines: dict[str, int] = {}
    file_name: str | None = None
    if preset:
        data = _deep_merge(data, _section(_preset_data(preset), section))
        sources.append(f"preset {preset}")
    if config_file:
        from fashion_attr import storage

        path = str(config_file)
        try:
            text = storage.read_text(path)  # a local file or an s3:// object
            loaded = yaml.safe_load(text) or {}
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ConfigError(
                f"config file {path} does not exist. Fix: pass the path or URI of a YAML file"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of fields")
        data = _deep_merge(data, _section(loaded, section))
        sources.append(str(path))
        file_lines, file_name = _key_lines(text, section), path
    later: dict[str, Any] = {}
    if overrides:
        later = parse_overrides(overrides)
        data = _deep_merge(data, later)
        sources.append("--set")
    if extra:
        extra_set = {k: v for k, v in extra.items() if v is not None}
        later = _deep_merge(later, extra_set)
        data = _deep_merge(data, extra_set)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            _format_validation(
                model,
                err,
                " < ".join(sources) or "defaults",
                file_lines,
                file_name,
                _flat_keys(later),
            )
        ) from None


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """JSON-safe dict of a config (aliases used, so it loads back with load_config)."""
    return config.model_dump(mode="json", by_alias=True)


class AuditConfig(_Frozen):
    """``audit``: what each new catalog batch teaches, before training (docs/catalog-audit.md).

    The champion scores the images a run folded in; the step writes a label-issue queue,
    a drift report, tags for unlabelled images and a labelling queue beside the version.
    """

    label_issues: Literal["report", "exclude", "downweight"] = Field(
        "report",
        description="What becomes of flagged train records: listed only (report); left out "
        "of a derived version (exclude); their disputed attribute labels masked as unknown, "
        "a disputed category left out (downweight). Val/test records are only reported.",
    )
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both"] = Field(
        "prune_by_noise_rate",
        description="cleanlab's confident-learning filter (per-class thresholds from the "
        "champion on the base version's val split).",
    )
    alpha: float = Field(
        0.01, gt=0, lt=1, description="Significance of each drift test (BH over labels)."
    )
    group_by: Literal["folder", "image"] = Field(
        "folder",
        description="The unit the drift tests count: a product's images share a folder and "
        "their labels (DeepFashion-C's img/<item>/...), so 'folder' counts products; "
        "'image' treats every image as independent.",
    )
    max_group_size: int = Field(
        50, ge=1, description="A folder with more images is no product: its images count alone."
    )
    new_label_min_count: int = Field(
        2, ge=1, description="Positives in the batch that make a label unseen in the base 'new'."
    )
    permutations: int = Field(
        1000, ge=99, description="Permutations of the image-feature (MMD) two-sample test."
    )
    feature_dims: int = Field(
        32, ge=1, description="Principal components of the champion's features for the MMD."
    )
    max_reference: int = Field(
        2000, ge=10, description="Base val+test images scored as the feature reference."
    )
    tail_threshold: int | None = Field(
        None, ge=1, description="Tail = fewer train positives; None: the evaluate step's."
    )
    tag_threshold: float = Field(
        0.5, gt=0, lt=1, description="Attribute probability at which a tag is given."
    )
    top_k: int = Field(3, ge=1, description="Tags listed per attribute group (and overall).")
    thumbnails: int = Field(8, ge=0, description="Top label issues shown as thumbnails.")
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    device: Device = "auto"
    seed: int = Field(0, description="Seeds the reference sample and the permutations.")


# Registered here, at the end, so the audit step is one appended block of this module.
_SECTIONS[AuditConfig] = "audit"
__all__ += ["AuditConfig"]
