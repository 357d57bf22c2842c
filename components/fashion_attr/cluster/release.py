"""Which Kubeflow Trainer release a cluster runs, and which of them the launcher supports.

The TrainJob API changed between releases (v2.1 ``spec.podTemplateOverrides``, v2.2 and
v2.3 ``spec.runtimePatches``, v2.0 ``spec.podSpecOverrides``, which cannot label pods);
the release comes from ``FA_TRAINER_RELEASE`` when set, else from the schema of the CRD
``trainjobs.trainer.kubeflow.org`` (:func:`detect_trainer_release`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any, Literal, cast

from fashion_attr.cluster.kube import is_transient, status_of

__all__ = [
    "TRAINER_POD_FIELD",
    "TRAINER_RELEASES",
    "TRAINER_RELEASE_ENV",
    "TRAINJOB_CRD",
    "TrainerRelease",
    "check_release",
    "detect_trainer_release",
    "release_from_env",
    "trainer_release_from_crd",
]

logger = logging.getLogger(__name__)

TrainerRelease = Literal["2.1", "2.2", "2.3"]


#: Kubeflow Trainer releases whose TrainJob API the launcher writes (major.minor).
TRAINER_RELEASES: tuple[str, ...] = ("2.1", "2.2", "2.3")


#: The TrainJob field that carries the per-pod settings, per supported Trainer release.
TRAINER_POD_FIELD: dict[str, str] = {
    "2.1": "podTemplateOverrides",
    "2.2": "runtimePatches",
    "2.3": "runtimePatches",
}


#: Environment variable that names the cluster's Trainer release (skips the CRD lookup).
TRAINER_RELEASE_ENV = "FA_TRAINER_RELEASE"


TRAINJOB_CRD = "trainjobs.trainer.kubeflow.org"


_RELEASE_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?")


V20_REFUSAL = (
    "Kubeflow Trainer v2.0 is not supported: its TrainJob API (spec.podSpecOverrides) cannot "
    "label the training pods, so the NetworkPolicies training-peers and pipeline-egress "
    "would cut them off. Fix: upgrade the Trainer to v2.1, v2.2 or v2.3, or run with "
    "train_job_kind=pytorchjob (Training Operator v1.7-v1.9)"
)


def check_release(release: str) -> None:
    """Refuse a Trainer release the launcher cannot write a TrainJob for (names the fix)."""
    if release == "2.0":
        raise ValueError(V20_REFUSAL)
    if release not in TRAINER_RELEASES:
        raise ValueError(
            f"trainer_release {release!r} is not supported. Fix: use one of "
            f"{list(TRAINER_RELEASES)} (Kubeflow Trainer v2.1.x, v2.2.x, v2.3.x)"
        )


def release_from_env(value: str) -> TrainerRelease:
    """``FA_TRAINER_RELEASE`` (``2.3``, ``v2.3.0``...) as a supported major.minor."""
    match = _RELEASE_RE.fullmatch(value.strip())
    release = f"{match.group(1)}.{match.group(2)}" if match else value.strip()
    try:
        check_release(release)
    except ValueError as exc:
        raise ValueError(f"{TRAINER_RELEASE_ENV}={value!r}: {exc}") from None
    return cast(TrainerRelease, release)


def trainer_release_from_crd(crd: Mapping[str, Any]) -> TrainerRelease:
    """The Kubeflow Trainer release whose TrainJob API a ``trainjobs`` CRD describes.

    The CRD carries no release number, so the schema of ``v1alpha1`` tells it: v2.2 and
    later have ``spec.runtimePatches`` (v2.3 added ``terminationGracePeriodSeconds`` to its
    pod patch), v2.1 ``spec.podTemplateOverrides``, v2.0 ``spec.podSpecOverrides``. A later
    release that keeps the v2.3 shape reads as ``"2.3"``; the strict field validation at
    submit time catches one that does not.

    Args:
        crd: The CustomResourceDefinition ``trainjobs.trainer.kubeflow.org`` as a dict
            (camelCase keys, as the API server returns it).

    Returns:
        ``"2.1"``, ``"2.2"`` or ``"2.3"``.

    Raises:
        RuntimeError: For Trainer v2.0, a CRD that does not serve ``v1alpha1``, or one with
            none of the known fields (naming the fields it has).
    """
    versions = (crd.get("spec") or {}).get("versions") or []
    served = [v for v in versions if v.get("name") == "v1alpha1" and v.get("served", True)]
    if not served:
        raise RuntimeError(
            f"the CRD {TRAINJOB_CRD} does not serve trainer.kubeflow.org/v1alpha1 (it serves "
            f"{[v.get('name') for v in versions if v.get('served', True)]}). Fix: install "
            "Kubeflow Trainer v2.1, v2.2 or v2.3, or run with train_job_kind=pytorchjob"
        )
    schema = served[0].get("schema", {}).get("openAPIV3Schema", {})
    fields = schema.get("properties", {}).get("spec", {}).get("properties", {})
    if "runtimePatches" in fields:
        pod_patch = _schema_at(
            fields["runtimePatches"],
            "items/trainingRuntimeSpec/template/spec/replicatedJobs/items/template/spec/"
            "template/spec",
        )
        return "2.3" if "terminationGracePeriodSeconds" in pod_patch else "2.2"
    if "podTemplateOverrides" in fields:
        return "2.1"
    if "podSpecOverrides" in fields:
        raise RuntimeError(V20_REFUSAL)
    raise RuntimeError(
        f"the CRD {TRAINJOB_CRD} (v1alpha1) has none of runtimePatches, podTemplateOverrides, "
        f"podSpecOverrides in its TrainJob spec (it has {sorted(fields)}): not a Kubeflow "
        "Trainer release the launcher knows. Fix: install Kubeflow Trainer v2.1, v2.2 or "
        f"v2.3, set {TRAINER_RELEASE_ENV} if its TrainJob API is one of theirs, or run with "
        "train_job_kind=pytorchjob"
    )


def _schema_at(schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The ``properties`` of the sub-schema at ``path`` (``items`` steps into arrays)."""
    node: Mapping[str, Any] = schema
    for part in path.split("/"):
        node = (
            node.get("items", {}) if part == "items" else node.get("properties", {}).get(part, {})
        )
    return cast(Mapping[str, Any], node.get("properties", {}))


def detect_trainer_release(
    api: Any, *, poll_s: float = 5, max_api_errors: int = 3
) -> TrainerRelease:
    """Read the CRD ``trainjobs.trainer.kubeflow.org`` and tell the Trainer release from it.

    Args:
        api: A ``kubernetes.client.CustomObjectsApi`` (the CRD is read as a cluster-scoped
            custom object of ``apiextensions.k8s.io/v1``, which returns plain JSON).
        poll_s: Seconds between retries of a transient API error.
        max_api_errors: Transient API errors (5xx, 429, network) tolerated.

    Returns:
        ``"2.1"``, ``"2.2"`` or ``"2.3"`` (see :func:`trainer_release_from_crd`).

    Raises:
        RuntimeError: If the Trainer is not installed (no CRD), the launcher may not read the
            CRD (naming the permission it needs), or the release is not supported.
    """
    errors = 0
    while True:
        try:
            crd = api.get_cluster_custom_object(
                "apiextensions.k8s.io", "v1", "customresourcedefinitions", TRAINJOB_CRD
            )
            break
        except Exception as exc:
            status = status_of(exc)
            if status == 404:
                raise RuntimeError(
                    f"Kubeflow Trainer is not installed: the cluster has no CRD {TRAINJOB_CRD}, "
                    "so no TrainJob can run. Fix: install Kubeflow Trainer v2.1, v2.2 or v2.3, "
                    "or run with train_job_kind=pytorchjob (Training Operator v1.7-v1.9)"
                ) from exc
            if status in (401, 403):
                raise RuntimeError(
                    f"the launcher may not read the CRD {TRAINJOB_CRD}, which tells the "
                    "installed Trainer release. Fix: bind a ClusterRole with verb get on "
                    "apiextensions.k8s.io customresourcedefinitions (resourceNames: "
                    f"{TRAINJOB_CRD}) to the launcher's ServiceAccount (pipeline-runner), or "
                    f"set {TRAINER_RELEASE_ENV} to the installed release "
                    f"({', '.join(TRAINER_RELEASES)}) in the launcher's environment"
                ) from exc
            errors += 1
            if not is_transient(exc) or errors > max_api_errors:
                raise
            logger.warning("reading the CRD %s failed (%s); retrying", TRAINJOB_CRD, exc)
            time.sleep(poll_s)
    release = trainer_release_from_crd(crd)
    logger.info(
        "Kubeflow Trainer v%s TrainJob API (spec.%s), read from the CRD %s",
        release,
        TRAINER_POD_FIELD[release],
        TRAINJOB_CRD,
    )
    return release
