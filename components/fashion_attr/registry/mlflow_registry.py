"""Register the trained classifier in MLflow and apply the promotion gate with aliases.

:func:`register_and_gate` is what the ``register`` step runs:

1. Read ``metrics.json`` from ``evaluate`` and refuse (``ValueError``) when a gated
   metric is missing or non-finite, and check that ``model.pt`` is a classifier
   export: both BEFORE anything is written to MLflow.
2. Idempotency: a model version tagged ``fashion_attr.pipeline_run = <id>`` already
   exists (a retried pipeline step) -> reuse it, create nothing, re-apply the gate
   with the metrics recorded on it. A different ``model.pt`` (sha256 tag) under the
   same pipeline run id is refused (``ValueError``).
3. Otherwise open the step's MLflow run (nested under the pipeline's parent run,
   :func:`fashion_attr.tracking.start_step_run`, as every step's run), log the
   resolved config, the metrics and the reports, log the pyfunc model and register
   it as a new version created WITH its tags (pipeline run, model sha256, dataset
   and code version, every finite metric as ``metric.<name>``), so a crash cannot
   leave an untagged version that a retry would duplicate.
4. Point alias ``challenger`` at the version, read alias ``champion`` and its
   ``metric.*`` tags, run :func:`fashion_attr.registry.gate.decide_promotion`, and
   on promotion move alias ``champion`` to the version.
5. Record the decision on the version: tags ``gate.promoted``, ``gate.reason``,
   ``gate.compared_to``, ``gate.decision`` (JSON) and a description holding the
   Markdown comparison table; the same table is logged to the run as
   ``gate/decision.md``.

Only aliases are used (no deprecated stages). The champion is never lost:
setting an alias moves it in one registry call, and this module never deletes
an alias or a version. Two pipelines gating at the same moment both compare
against the champion they read; the later alias write wins.

Credentials come from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
(or a token) in the environment, read by MLflow's client; nothing here logs the
environment, and parameters pass through :func:`fashion_attr.credentials.redact_params`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fashion_attr import storage
from fashion_attr.config import RegisterConfig, config_to_dict
from fashion_attr.credentials import adopt_uri_credentials, redact_params, safe_uri
from fashion_attr.endpoints import check_mlflow, prepare_mlflow_client
from fashion_attr.evaluation.metrics import PER_IMAGE_NAME, PerImageStats, paired_bootstrap
from fashion_attr.evaluation.report import read_metrics_json
from fashion_attr.registry.gate import (
    Decision,
    Evidence,
    GateRow,
    decide_promotion,
    is_finite_metric,
    non_finite_metrics,
    render_markdown,
    validate_gated_metrics,
    with_evidence,
)
from fashion_attr.tracking import (
    PIPELINE_RUN_TAG,
    experiment_id,
    flatten,
    guarded_run,
    start_step_run,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Registration",
    "RegistryAuthError",
    "RegistryError",
    "metric_key",
    "register_and_gate",
    "use_tracking_uri",
    "version_metrics",
]

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG_PREFIX = "metric."
SHA_TAG = "fashion_attr.model_sha256"
DATASET_TAG = "dataset_version"
CODE_TAG = "code_version"
_MODEL_DESCRIPTION = (
    "Fashion attribute classifier (Ye et al., HABP + Deact) registered by the fashion_attr "
    "retraining pipeline. Alias 'champion' is the served model; 'challenger' is the latest "
    "candidate. Each version's description holds its promotion-gate table."
)


class RegistryError(RuntimeError):
    """The MLflow server failed or refused a registry operation (not an input problem)."""


class RegistryAuthError(ValueError):
    """MLflow refused the credentials (HTTP 401/403): a configuration problem (exit 2)."""


@dataclass(frozen=True)
class Registration:
    """Outcome of :func:`register_and_gate`.

    Attributes:
        name: registered model name.
        version: the version registered (or reused) for this pipeline run.
        promoted: whether ``version`` holds alias ``champion`` after the step.
        champion_version: the champion after the step.
        previous_champion: the champion before the step (None for the first model).
        reused: True when the version already existed for this pipeline run.
        run_id: the MLflow run that logged the version.
        decision: the gate's decision.
        table: the decision as Markdown (the paired table, and the champion's figures as
            registered for the record).
    """

    name: str
    version: str
    promoted: bool
    champion_version: str | None
    previous_champion: str | None
    reused: bool
    run_id: str | None
    decision: Decision
    table: str = ""


def metric_key(name: str) -> str:
    """MLflow-safe form of a metric name (``attr_recall@3/all`` -> ``attr_recall_at_3/all``).

    MLflow metric and tag names allow only alphanumerics and ``_ - . / : space``; ``@``
    becomes ``_at_`` (as :class:`~fashion_attr.tracking.Tracker` does), anything else ``_``.
    """
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def version_metrics(mv: ModelVersion, names: Sequence[str]) -> dict[str, float | None]:
    """Read metrics ``names`` back from a version's ``metric.*`` tags (None when absent)."""
    tags = mv.tags or {}
    out: dict[str, float | None] = {}
    for name in names:
        raw = tags.get(METRIC_TAG_PREFIX + metric_key(name))
        try:
            out[name] = float(raw) if raw is not None else None
        except ValueError:
            out[name] = None
    return out


def _check_model_file(path: str, source: str) -> dict[str, Any]:
    from fashion_attr.checkpoint import load_artifact
    from fashion_attr.classifier.export import check_model_blob

    try:
        blob = load_artifact(path, map_location="cpu")
    # torch raises many types for a file that is not a torch archive (IndexError, RuntimeError,
    # UnpicklingError, UnsafeArtifactError...): all mean "not a model.pt", a bad input (exit 2).
    except Exception as exc:
        raise ValueError(
            f"{source}: cannot be read as a classifier artifact ({str(exc).splitlines()[0]}). "
            "Fix: pass the model.pt written by train_classifier"
        ) from None
    return {k: v for k, v in check_model_blob(blob, source).items() if k != "state_dict"}


@contextlib.contextmanager
def use_tracking_uri(uri: str | None) -> Iterator[None]:
    """Point MLflow's fluent API (needed by ``log_model``) at ``uri``, then restore it.

    MLflow's own context manager restores its global but unsets ``MLFLOW_TRACKING_URI``
    when no URI had been set explicitly, so the variable is restored here too.
    Credentials embedded in ``uri`` are moved to ``MLFLOW_TRACKING_USERNAME``/
    ``MLFLOW_TRACKING_PASSWORD`` for the duration (see :func:`adopt_uri_credentials`).
    """
    if not uri:
        adopt_uri_credentials()  # the URI from the environment: scrub it in place
        yield
        return
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {name: os.environ.get(name) for name in names}
    scratch: dict[str, str] = {"MLFLOW_TRACKING_URI": uri}
    scratch.update({k: v for k, v in saved.items() if k != "MLFLOW_TRACKING_URI" and v})
    adopt_uri_credentials(scratch)
    try:
        for name in names[1:]:
            if scratch.get(name):
                os.environ[name] = scratch[name]
        with _use_tracking_uri(scratch["MLFLOW_TRACKING_URI"]):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _mlflow_errors(where: str) -> Iterator[None]:
    """Turn MLflow server errors into errors naming the server and the fix."""
    try:
        yield
    except MlflowException as exc:
        text = str(exc)
        uri = safe_uri(mlflow.get_tracking_uri())
        if exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or re.search(
            r"\b(401|403)\b", text
        ):
            raise RegistryAuthError(
                f"MLflow at {uri} refused the credentials during {where}: {text.splitlines()[0]}."
                " Fix: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the Kubernetes "
                "secret of the MLflow server) for a user allowed to write this experiment and "
                "registered model"
            ) from None
        raise RegistryError(
            f"MLflow at {uri} failed during {where}: {text.splitlines()[0] if text else exc!r}."
            " Fix: check that the tracking server is up and MLFLOW_TRACKING_URI is right; the "
            "step is safe to re-run (it reuses the version of this pipeline run)"
        ) from exc


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _find_version(client: MlflowClient, name: str, pipeline_run_id: str) -> ModelVersion | None:
    quoted = pipeline_run_id.replace("'", "\\'")
    found: list[ModelVersion] = client.search_model_versions(
        filter_string=f"name = '{name}' and tags.`{PIPELINE_RUN_TAG}` = '{quoted}'"
    )
    found = [mv for mv in found if (mv.tags or {}).get(PIPELINE_RUN_TAG) == pipeline_run_id]
    if not found:
        return None
    # Several can only exist if created outside this module; the oldest is the original.
    return min(found, key=lambda mv: int(mv.version))


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    # Read the registered model's alias map rather than get_model_version_by_alias: a missing
    # alias is then None, not an error whose code differs between registry backends.
    aliases = client.get_registered_model(name).aliases or {}
    version = aliases.get(alias)
    return client.get_model_version(name, str(version)) if version is not None else None


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name, description=_MODEL_DESCRIPTION)
        except MlflowException as exc2:  # created meanwhile by a concurrent pipeline
            if exc2.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def _local_file(uri: str, workdir: Path) -> str:
    if not storage.is_s3(uri):
        if not Path(uri).is_file():
            raise FileNotFoundError(f"{uri}: no such file. Fix: pass an existing file or s3:// URI")
        return str(uri)
    dst = workdir / Path(storage.split_s3(uri)[1]).name
    storage.download_file(uri, dst)
    return str(dst)


def _log_and_register(
    client: MlflowClient,
    *,
    model_path: str,
    metrics: Mapping[str, float | None],
    model_name: str,
    pipeline_run_id: str,
    cfg: RegisterConfig,
    params: Mapping[str, Any],
    version_tags: Mapping[str, str],
    reports: Sequence[str],
    workdir: Path,
) -> tuple[ModelVersion, str]:
    from fashion_attr.registry.pyfunc import log_pyfunc_model

    run = start_step_run(
        client,
        "register",
        pipeline_run=pipeline_run_id,
        experiment=experiment_id(client),
        tags={DATASET_TAG: version_tags[DATASET_TAG], CODE_TAG: version_tags[CODE_TAG]},
    )
    run_id = run.info.run_id
    # The fluent run (log_model needs it) ends FINISHED or FAILED; the guard ends it KILLED
    # on Ctrl-C or SIGTERM.
    with (
        guarded_run(client, run_id, "register", end_on_success=False),
        mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None),
    ):
        mlflow.log_params({k[:250]: v[:6000] for k, v in redact_params(flatten(params)).items()})
        finite = {metric_key(k): float(v) for k, v in metrics.items() if is_finite_metric(v)}
        if finite:
            mlflow.log_metrics(finite)
        for report in reports:
            mlflow.log_artifact(_local_file(report, workdir), "reports")
        info = log_pyfunc_model(
            model_path,
            "model",
            threshold=cfg.attribute_threshold,
            top_k=cfg.top_k,
            metadata={"pipeline_run": pipeline_run_id, "code_version": version_tags[CODE_TAG]},
        )
        _ensure_registered_model(client, model_name)
        # Not mlflow.register_model: it creates the registered model itself and prints
        # "Registered model ... already exists" whenever it does (every run, the first too).
        mv = client.create_model_version(
            model_name,
            info.model_uri,
            run_id=run_id,
            tags=dict(version_tags),
            model_id=getattr(info, "model_id", None),
        )
        log.info("created version %s of registered model %s", mv.version, model_name)
    return mv, run_id


def register_and_gate(
    model_pt_uri: str,
    metrics_uri: str,
    *,
    model_name: str,
    pipeline_run_id: str,
    cfg: RegisterConfig,
    tracking_uri: str | None = None,
    dataset_version: str | None = None,
    code_version: str | None = None,
    reports: Sequence[str] = (),
    score_champion: Callable[[str], Mapping[str, float | None]] | None = None,
    lineage_tags: Mapping[str, str] | None = None,
) -> Registration:
    """Register ``model.pt`` as a new version (once per pipeline run) and gate its promotion.

    Like for like: with ``score_champion`` (a function from a ``model.pt`` path to the
    metrics of that model on the challenger's test split, as evaluate computed the
    challenger's), the champion is scored now on the same images and tail set and the gate
    compares those paired figures. Without it, the champion's metrics as registered are
    used (another test split; the decision says so).

    Args:
        model_pt_uri: ``model.pt`` from ``train_classifier`` (local path or ``s3://``).
        metrics_uri: ``metrics.json`` from ``evaluate``.
        model_name: registered model name.
        pipeline_run_id: the pipeline run (KFP run id); makes the step idempotent.
        cfg: the register config (gate metrics, tolerance, tie rule, threshold, k).
        tracking_uri: MLflow tracking/registry URI; default: ``MLFLOW_TRACKING_URI``.
        dataset_version: tag value; default: the one recorded in ``model.pt``.
        code_version: tag value; default: the ``fashion_attr`` package version.
        reports: files (local or ``s3://``) attached to the run under ``reports/``.
        score_champion: scores a champion ``model.pt`` on the challenger's test split.
        lineage_tags: more version tags, e.g. the run's training key
            (:mod:`fashion_attr.registry.lineage`).

    Returns:
        :class:`Registration`.

    Raises:
        ValueError: bad metrics (missing/non-finite gated metric), a file that is not
            a classifier export, or an empty name/id; nothing is written to MLflow.
        FileNotFoundError: ``model_pt_uri``/``metrics_uri``/a report does not exist.
        RegistryAuthError: MLflow refused the credentials.
        RegistryError: MLflow failed otherwise.
    """
    import fashion_attr

    if not model_name:
        raise ValueError("register: --model-name is empty. Fix: pass a registered model name")
    if not pipeline_run_id:
        raise ValueError("register: --pipeline-run is empty. Fix: pass the KFP run id")
    # 1. Everything that can be wrong with the inputs fails here, before any MLflow write.
    metrics = read_metrics_json(metrics_uri)
    validate_gated_metrics(metrics, cfg.gate_metrics, source=metrics_uri)
    broken = non_finite_metrics(metrics)
    if broken:
        raise ValueError(
            f"{metrics_uri}: metric(s) {', '.join(f'{k} = {metrics[k]}' for k in broken)} are "
            "not finite: the evaluation is broken and the model is not registered. Fix: "
            "re-run evaluate (undefined metrics are written as null, never NaN)"
        )
    with tempfile.TemporaryDirectory(prefix="fa-register-") as tmp:
        workdir = Path(tmp)
        model_path = _local_file(model_pt_uri, workdir)
        meta = _check_model_file(model_path, model_pt_uri)
        for report in reports:
            if not storage.exists(report):
                raise FileNotFoundError(f"report {report}: no such file. Fix: pass existing files")
        dataset_version = dataset_version or str(meta.get("dataset_version") or "unknown")
        code_version = code_version or fashion_attr.__version__
        version_tags = {
            PIPELINE_RUN_TAG: pipeline_run_id,
            SHA_TAG: _sha256(model_path),
            DATASET_TAG: dataset_version,
            CODE_TAG: code_version,
            **dict(lineage_tags or {}),
            # The gated metrics only (every metric is logged to the version's run).
            **{
                # validate_gated_metrics checked that each is a finite number
                METRIC_TAG_PREFIX + metric_key(k): repr(float(cast(float, metrics[k])))
                for k in cfg.gate_metrics
            },
        }
        params = {
            "config": config_to_dict(cfg),
            "model_uri": model_pt_uri,
            "metrics_uri": metrics_uri,
            "model_name": model_name,
            "pipeline_run": pipeline_run_id,
        }
        with use_tracking_uri(tracking_uri):
            prepare_mlflow_client()
            check_mlflow()  # seconds, one line naming the fix (MLflow's client: minutes)
        with use_tracking_uri(tracking_uri), _mlflow_errors(f"register of '{model_name}'"):
            client = MlflowClient()
            existing = _find_version(client, model_name, pipeline_run_id)
            if existing is not None:
                recorded = (existing.tags or {}).get(SHA_TAG)
                if recorded and recorded != version_tags[SHA_TAG]:
                    raise ValueError(
                        f"pipeline run {pipeline_run_id!r} already registered {model_name} "
                        f"version {existing.version} from another model file (sha256 "
                        f"{recorded[:12]}..., {model_pt_uri} has {version_tags[SHA_TAG][:12]}...)."
                        " Fix: give a new training run a new --pipeline-run id"
                    )
                log.info(
                    "pipeline run %s already registered %s version %s: reusing it",
                    pipeline_run_id,
                    model_name,
                    existing.version,
                )
                # The version is what it was registered as: gate on its recorded metrics
                # (a re-run evaluation may differ in the last digits on a GPU).
                recorded_metrics = version_metrics(existing, cfg.gate_metrics)
                metrics = {
                    **metrics,
                    **{k: v for k, v in recorded_metrics.items() if is_finite_metric(v)},
                }
                mv, run_id, reused = existing, existing.run_id, True
            else:
                mv, run_id = _log_and_register(
                    client,
                    model_path=model_path,
                    metrics=metrics,
                    model_name=model_name,
                    pipeline_run_id=pipeline_run_id,
                    cfg=cfg,
                    params=params,
                    version_tags=version_tags,
                    reports=reports,
                    workdir=workdir,
                )
                reused = False
            return _gate(
                client,
                mv,
                metrics,
                cfg,
                run_id,
                reused,
                score_champion,
                workdir,
                _Challenger(_metrics_extra(metrics_uri), _per_image_beside(metrics_uri)),
            )


def _champion_model(client: MlflowClient, champion: ModelVersion, workdir: Path) -> str:
    """Download the champion's exported ``model.pt`` (the pyfunc's artifact) to ``workdir``."""
    from fashion_attr.registry.pyfunc import MODEL_ARTIFACT

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{champion.name}/{champion.version}",
        dst_path=str(workdir / f"champion-v{champion.version}"),
    )
    files = sorted(Path(local).rglob("*.pt"))
    if not files:
        raise FileNotFoundError(
            f"{champion.name} v{champion.version} holds no exported model (artifact "
            f"'{MODEL_ARTIFACT}'): it was not registered by this pipeline"
        )
    return str(files[0])


#: The gate's confidence intervals: paired bootstrap over the test images.
BOOTSTRAP = {"level": 0.95, "resamples": 1000, "seed": 0}


@dataclass(frozen=True)
class _Challenger:
    """What ``evaluate`` wrote beside the challenger's metrics: counts, per-image statistics."""

    extra: Mapping[str, Any]
    per_image: PerImageStats | None


def _metrics_extra(metrics_uri: str) -> dict[str, Any]:
    """The ``extra`` object of ``evaluate``'s ``metrics.json`` (images, tail attributes)."""
    try:
        extra = json.loads(storage.read_text(metrics_uri)).get("extra")
    except (OSError, ValueError, AttributeError):
        return {}
    return extra if isinstance(extra, dict) else {}


def _per_image_beside(metrics_uri: str) -> PerImageStats | None:
    """``per_image.npz`` next to ``metrics.json`` (written by ``evaluate``), if there."""
    uri = str(metrics_uri).rsplit("/", 1)[0] + "/" + PER_IMAGE_NAME
    if "/" not in str(metrics_uri):
        uri = PER_IMAGE_NAME
    try:
        return PerImageStats.from_bytes(storage.read_bytes(uri))
    except FileNotFoundError:
        return None
    except (ValueError, OSError, storage.StorageError) as exc:
        log.warning("%s: ignored (%s); the gate shows no confidence intervals", uri, exc)
        return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _evidence(
    gate_metrics: Sequence[str],
    challenger: _Challenger,
    champion_stats: PerImageStats | None,
) -> dict[str, Evidence]:
    """Per gated metric: n (images, tail attributes, positives) and the paired interval."""
    stats = challenger.per_image
    images = stats.images if stats is not None else _int(challenger.extra.get("images"))
    tail = (
        stats.tail_attributes
        if stats is not None
        else _int(challenger.extra.get("tail_attributes"))
    )
    out = {}
    for name in gate_metrics:
        interval = None
        if stats is not None and champion_stats is not None:
            interval = paired_bootstrap(
                stats,
                champion_stats,
                name,
                resamples=int(BOOTSTRAP["resamples"]),
                seed=int(BOOTSTRAP["seed"]),
                level=float(BOOTSTRAP["level"]),
            )
        positives = stats.positives(name) if stats is not None else None
        out[name] = Evidence(images, tail, positives, interval)
    return out


def _scored(result: Any) -> tuple[dict[str, float | None], PerImageStats | None]:
    """A champion scorer's answer: a metrics mapping, or scores with ``per_image`` too."""
    metrics = getattr(result, "metrics", result)
    clean = {k: (float(v) if is_finite_metric(v) else None) for k, v in dict(metrics).items()}
    return clean, getattr(result, "per_image", None)


def _decide(
    client: MlflowClient,
    champion: ModelVersion | None,
    metrics: Mapping[str, float | None],
    cfg: RegisterConfig,
    score_champion: Callable[[str], Any] | None,
    workdir: Path,
    challenger: _Challenger,
) -> tuple[Decision, dict[str, float | None] | None]:
    """The gate's decision, and the champion's metrics as registered (for the record)."""
    decision, recorded, champion_stats = _decide_rule(
        client, champion, metrics, cfg, score_champion, workdir
    )
    return with_evidence(
        decision, _evidence(cfg.gate_metrics, challenger, champion_stats)
    ), recorded


def _decide_rule(
    client: MlflowClient,
    champion: ModelVersion | None,
    metrics: Mapping[str, float | None],
    cfg: RegisterConfig,
    score_champion: Callable[[str], Any] | None,
    workdir: Path,
) -> tuple[Decision, dict[str, float | None] | None, PerImageStats | None]:
    """The gate's rule, the champion's recorded metrics, its per-image statistics if scored.

    The rule is the one of :func:`decide_promotion` (point estimates against the
    tolerance): the evidence added by :func:`_decide` does not change it.
    """
    if champion is None:
        return decide_promotion(metrics, None, cfg.gate_metrics, cfg.tolerance), None, None
    recorded = version_metrics(champion, cfg.gate_metrics)
    args = (cfg.gate_metrics, cfg.tolerance, cfg.tie_rule)
    if score_champion is None:
        decision = decide_promotion(metrics, recorded, *args)
        reason = f"{decision.reason} (champion's metrics as registered: another test split)"
        return Decision(decision.promote, reason, decision.table, "recorded"), recorded, None
    try:
        paired, champion_stats = _scored(score_champion(_champion_model(client, champion, workdir)))
    except (ValueError, FileNotFoundError, MlflowException, OSError) as exc:
        promote = cfg.on_incomparable == "promote"
        reason = (
            f"champion v{champion.version} could not be scored on this test split "
            f"({str(exc).splitlines()[0]}); {'promoted' if promote else 'champion kept'} as "
            f"register.on_incomparable={cfg.on_incomparable} says. To promote by hand: "
            f"MlflowClient().set_registered_model_alias('{champion.name}', 'champion', <version>)"
        )
        rows = decide_promotion(metrics, None, *args).table
        return Decision(promote, reason, rows, "incomparable"), recorded, None
    decision = decide_promotion(metrics, paired, *args)
    reason = f"{decision.reason} (paired: the champion scored on this test split)"
    return Decision(decision.promote, reason, decision.table, "paired"), recorded, champion_stats


def _gate(
    client: MlflowClient,
    mv: ModelVersion,
    metrics: Mapping[str, float | None],
    cfg: RegisterConfig,
    run_id: str | None,
    reused: bool,
    score_champion: Callable[[str], Any] | None = None,
    workdir: Path | None = None,
    challenger: _Challenger | None = None,
) -> Registration:
    name, version = mv.name, str(mv.version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    champion = _alias_version(client, name, CHAMPION)
    previous = str(champion.version) if champion is not None else None
    if previous == version:
        # A retry after this version was already promoted: keep what the first attempt
        # decided and recorded; nothing changes in the registry.
        decision = _stored_decision(client.get_model_version(name, version))
        return Registration(name, version, True, version, version, reused, run_id, decision)

    challenger = challenger or _Challenger({}, None)
    decision, recorded = _decide(
        client,
        champion,
        metrics,
        cfg,
        score_champion,
        workdir or Path(tempfile.mkdtemp()),
        challenger,
    )
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    label = f"champion (v{previous})" if previous else "champion"
    if decision.basis == "paired":
        label += ", scored on this test split"
    table = render_markdown(decision, champion_label=label)
    if recorded is not None and decision.basis != "recorded":
        as_registered = with_evidence(
            decide_promotion(metrics, recorded, cfg.gate_metrics, cfg.tolerance),
            _evidence(cfg.gate_metrics, _Challenger(challenger.extra, None), None),
        )
        table += (
            "\nFor the record, the champion's metrics as registered (its own, older test "
            "split; not used by the gate):\n\n"
            + render_markdown(as_registered, champion_label=f"champion (v{previous}) as registered")
        )
    for key, value in {
        "gate.promoted": str(decision.promote).lower(),
        "gate.reason": decision.reason[:4000],
        "gate.basis": decision.basis,
        "gate.compared_to": previous or "none",
        "gate.decision": json.dumps(decision.to_dict(), sort_keys=True),
    }.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name,
        version,
        description=f"Promotion gate (pipeline run {(mv.tags or {}).get(PIPELINE_RUN_TAG)}):\n\n"
        + table,
    )
    if run_id:
        client.log_text(run_id, table, "gate/decision.md")
        client.log_dict(run_id, decision.to_dict(), "gate/decision.json")
    log.info("%s v%s: %s", name, version, decision.reason)
    champion_after = version if decision.promote else previous
    return Registration(
        name, version, decision.promote, champion_after, previous, reused, run_id, decision, table
    )


def _stored_decision(mv: ModelVersion) -> Decision:
    raw = (mv.tags or {}).get("gate.decision")
    if raw:
        try:
            data = json.loads(raw)
            rows = [GateRow(**row) for row in data.get("table", [])]
            basis = str(data.get("basis", "recorded"))
            return Decision(bool(data["promote"]), str(data["reason"]), rows, basis)
        except (ValueError, KeyError, TypeError):
            pass
    return Decision(True, f"version {mv.version} already holds alias '{CHAMPION}'", [], "first")
