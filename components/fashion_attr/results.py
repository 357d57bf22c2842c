"""The typed result of every pipeline step: one schema per step, in one place.

Each step's ``run`` returns its result, writes it to ``<out>/result.json`` and its CLI
prints it as one line of JSON; whoever runs a step (a developer, a test, the executor
under ``torchrun`` or in a cluster job, the KFP adapter) reads the outputs from it and
never guesses a file name. The trainers (:mod:`fashion_attr.gan.trainer`,
:mod:`fashion_attr.classifier.trainer`) build their step's result themselves, so a new
field is one edit here and one where it is filled.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fashion_attr import storage

__all__ = [
    "RESULT_NAME",
    "EvaluateResult",
    "PreprocessResult",
    "RegisterResult",
    "StepResult",
    "TrainClassifierResult",
    "TrainGanResult",
]

RESULT_NAME = "result.json"


class StepResult(BaseModel):
    """Base of every step's result: JSON-safe, frozen, written as ``<out>/result.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The step's name (``train_gan``); used in messages.
    step: ClassVar[str] = "step"

    def write(self, out: str) -> str:
        """Write the result to ``<out>/result.json`` (atomically); returns its URI."""
        uri = storage.join(out, RESULT_NAME)
        storage.write_text(uri, self.model_dump_json(indent=1) + "\n")
        return uri

    @classmethod
    def read(cls, out: str) -> Self:
        """Read the result a finished run wrote to ``<out>/result.json``.

        Raises:
            FileNotFoundError: the step never finished there (names the folder).
            ValueError: the file is not a result of this step.
        """
        uri = storage.join(out, RESULT_NAME)
        try:
            text = storage.read_text(uri)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{uri}: no such file: {cls.step} has not finished in {out}. Fix: run the "
                "step (or wait for it) before reading its result"
            ) from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ValueError(
                f"{uri} is not a {cls.step} result ({exc.error_count()} field error(s), first: "
                f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}). Fix: rerun {cls.step} "
                "into a fresh output folder"
            ) from None

    def to_json(self) -> str:
        """One line of JSON (what the CLI prints)."""
        return self.model_dump_json()


class PreprocessResult(StepResult):
    """What an ingest produced.

    Attributes:
        version: the dataset version id (``v-<16 hex>``); for a part run, the version the
            part belongs to.
        uri: the version folder (its ``manifest.json`` publishes it).
        status: ``created``, ``exists`` (nothing to do), ``part-written`` or ``part-exists``.
        part: the part a part run wrote, else None.
        counts: images per split in the version.
        skipped: images skipped (missing, undecodable, duplicate) by the publishing ingest.
        shards: shards in the version.
        base: the version an incremental run started from, else None.
        batches: catalog batches folded in by this run, oldest first (each gives a version).
        chain: the versions this run published, oldest first (the last is ``version``).
        latest: the ``LATEST`` pointer this run moved, else None.
        created: this run published (or, for a part, wrote) something.
    """

    step = "preprocess"

    version: str
    uri: str
    status: str
    part: int | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    skipped: int = 0
    shards: int = 0
    base: str | None = None
    batches: list[str] = Field(default_factory=list)
    chain: list[str] = Field(default_factory=list)
    latest: str | None = None
    created: bool = False


class TrainGanResult(StepResult):
    """What ``train_gan`` produced.

    Attributes:
        generator: the exported generator (``generator.pt``), what Deact loads.
        checkpoint: the last training checkpoint ("" when a generator was reused).
        config: the resolved config saved beside the outputs ("" when reused).
        metrics_log: the JSON Lines metrics log ("" when reused).
        samples: sample grids (plain and perturbed) per epoch end.
        dataset_version: the dataset the generator was trained on.
        steps: training steps in all.
        epochs: complete epochs.
        projection_msc: final mean squared cosine of the noise filters (paper Fig. 8).
        resumed_from_step: the checkpoint step this run resumed from, else None.
        quality: sample-quality figures (Frechet distances), when computed.
        reused: the generator was passed through (``--reuse-generator``), not trained.
    """

    step = "train_gan"

    generator: str
    checkpoint: str = ""
    config: str = ""
    metrics_log: str = ""
    samples: list[str] = Field(default_factory=list)
    dataset_version: str | None = None
    steps: int = 0
    epochs: int = 0
    projection_msc: float | None = None
    resumed_from_step: int | None = None
    quality: dict[str, float] = Field(default_factory=dict)
    reused: bool = False


class TrainClassifierResult(StepResult):
    """What ``train_classifier`` produced.

    Attributes:
        model: the exported classifier (``model.pt``): what evaluate and register read.
        checkpoint: the last training checkpoint.
        config: the resolved config saved beside the outputs.
        labels: the label names (``labels.json``).
        metrics_log: the JSON Lines metrics log.
        dataset_version: the dataset the model was trained on.
        steps: training steps in all.
        epochs: complete epochs.
        deact_steps: steps that added the Deact loss.
        val_metrics: validation metrics of the exported model (None: undefined, e.g. a
            group without positives in the val split).
        resumed_from_step: the checkpoint step this run resumed from, else None.
    """

    step = "train_classifier"

    model: str
    checkpoint: str
    config: str
    labels: str
    metrics_log: str
    dataset_version: str
    steps: int
    epochs: int
    deact_steps: int
    val_metrics: dict[str, float | None]
    resumed_from_step: int | None = None


class EvaluateResult(StepResult):
    """What ``evaluate`` produced.

    Attributes:
        metrics_uri: ``metrics.json`` (flat metrics plus the run's details).
        report: ``report.md``.
        per_attribute: ``per_attribute.csv``.
        plots: the PNG plots.
        files: every file written, ``metrics.json`` last.
        metrics: the finite metrics (what the gate and the KFP Metrics artifact read).
        images: images scored.
        split: the split scored.
        dataset_version: the dataset version scored.
        tail_attributes: attributes with fewer train positives than the tail threshold.
        model: the model that was evaluated.
    """

    step = "evaluate"

    metrics_uri: str
    report: str
    per_attribute: str
    plots: list[str]
    files: list[str]
    metrics: dict[str, float]
    images: int
    split: str
    dataset_version: str
    tail_attributes: int
    model: str


class RegisterResult(StepResult):
    """What ``register`` did.

    Attributes:
        name: the registered model.
        version: the version registered (or reused) for this pipeline run.
        model_uri: the version's MLflow URI (``models:/<name>/<version>``).
        alias: ``champion`` when the version was promoted, else ``challenger``.
        promoted: whether the version holds ``champion`` after the step.
        champion_version: the champion after the step.
        previous_champion: the champion before the step (None for the first model).
        reused: the version already existed for this pipeline run.
        reason: the gate's reason, in words.
        decision: the gate's decision with its comparison table; ``basis`` says what the
            champion's figures are (``paired``: scored now on this test split).
        gate_table: the decision as Markdown.
        run_id: the MLflow run that logged the version.
        metrics_uri: the challenger's ``metrics.json``.
        dataset_version: the dataset the model was trained on.
        audit: what the audit of the batches the model's data folded in found (status,
            counts, ``files``), when there was one.
    """

    step = "register"

    name: str
    version: str
    model_uri: str
    alias: str
    promoted: bool
    champion_version: str | None
    previous_champion: str | None
    reused: bool
    reason: str
    decision: dict[str, Any]
    gate_table: str = ""
    run_id: str | None = None
    metrics_uri: str = ""
    dataset_version: str | None = None
    audit: dict[str, Any] = Field(default_factory=dict)


class AuditResult(StepResult):
    """What ``audit`` found in the batches a run folded in (docs/catalog-audit.md).

    Attributes:
        status: ``audited``; ``no-champion`` (label drift only: no model to score with);
            ``nothing-new`` (the run folded nothing in: no file written).
        dataset_version: the version training should use: the audited one, or the one
            the policy derived (``exclude`` / ``downweight`` with flagged train records).
        dataset_uri: its folder.
        audited_version: the version the audit read (what the ingest published).
        audited_uri: its folder.
        base_version: the version the run started from.
        batches: the batches folded in since the base, oldest first.
        out: where the files went (``<audited version>/audit`` by default).
        files: ``label_issues``, ``drift``, ``tags``, ``to_label``, ``report_md``,
            ``report_html`` -> URI (those written).
        thumbnails: thumbnails of the top label issues.
        champion: the champion ``model.pt`` that scored, or None.
        champion_ref: how it was named (``models:/<name>@champion``, or the file).
        records: new records; ``labelled`` + ``unlabelled``.
        labelled: records with labels (a category at least).
        unlabelled: records without labels.
        label_issues: records whose labels the champion disputes.
        issues_by_kind: records per issue kind (a record may count twice).
        policy: ``audit.label_issues``.
        derived: whether the policy published a derived version.
        excluded: train records the policy left out.
        masked: train records whose disputed attribute labels were masked.
        policy_record: the derived version's ``audit_policy.json``.
        drift_flagged: whether any drift test flagged the batch.
        drift_reasons: why, in words.
        tagged: records tagged (no labels, or a category alone).
        to_label: records in the labelling queue.
        scored: images the champion scored (batch and reference).
        images_per_s: the batch scoring pass's rate (None: nothing scored).
        hardness: where the labelling queue's label hardness came from.
        notes: what a person should know.
        latest: the ``LATEST`` pointer this run moved (to a derived version), else None.
        mlflow_run_id: the MLflow run the audit was logged to, else None.
        metrics: the audit's figures as flat metrics (KFP Metrics, MLflow).
    """

    step = "audit"

    status: str
    dataset_version: str
    dataset_uri: str
    audited_version: str
    audited_uri: str
    base_version: str
    batches: list[str] = Field(default_factory=list)
    out: str = ""
    files: dict[str, str] = Field(default_factory=dict)
    thumbnails: list[str] = Field(default_factory=list)
    champion: str | None = None
    champion_ref: str | None = None
    records: int = 0
    labelled: int = 0
    unlabelled: int = 0
    label_issues: int = 0
    issues_by_kind: dict[str, int] = Field(default_factory=dict)
    policy: str = "report"
    derived: bool = False
    excluded: int = 0
    masked: int = 0
    policy_record: str | None = None
    drift_flagged: bool = False
    drift_reasons: list[str] = Field(default_factory=list)
    tagged: int = 0
    to_label: int = 0
    scored: int = 0
    images_per_s: float | None = None
    hardness: str = ""
    notes: list[str] = Field(default_factory=list)
    latest: str | None = None
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


__all__ += ["AuditResult"]
