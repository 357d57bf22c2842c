"""What is fixed when the pipeline is compiled, as one object passed explicitly.

The KFP backend cannot take an accelerator count, an image or a node selector from a
pipeline parameter (it resolves such a placeholder to "" and sets no GPU limit), so
these are compile-time settings: :class:`CompileSettings`. ``pipelines.retraining``
builds the DAG from one (``build_pipeline(settings)``), ``pipelines.run_local`` makes
its own (CPU, no retries, the local image), and ``make compile`` reads them from its
flags or, for convenience, from ``FA_*`` environment variables
(:meth:`CompileSettings.from_env`) at the command line, never at import time.

The compiled YAML records them: in the pipeline's description (what the KFP UI
shows) and as a ``# fashion-attr settings: {json}`` line in its header, which
``pipelines.schedule`` reads back so that what is scheduled is exactly what was
compiled (:func:`read_settings`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from fashion_attr import __version__
from fashion_attr.version import code_version
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "DEFAULT_IMAGE",
    "ENV_NAMES",
    "SETTINGS_MARKER",
    "CompileSettings",
    "SettingsError",
    "read_settings",
]

#: The image ``make image`` tags locally: the package version is the one version source.
DEFAULT_IMAGE = f"fashion-attr:{__version__}"
#: The header line of a compiled package that holds its settings as JSON.
SETTINGS_MARKER = "# fashion-attr settings: "
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


class SettingsError(ValueError):
    """Compile settings that cannot work (the message names the setting and the fix)."""


class CompileSettings(BaseModel):
    """Placement, image and names fixed in the compiled pipeline.

    Attributes:
        image: the project image every task runs (``registry/name@sha256:...`` for a
            cluster: a tag can be moved, a digest cannot).
        gpus_per_step: GPUs per training pod (``torchrun`` over them when > 1); 0 trains
            on the CPU and places no task on the GPU pool.
        train_nodes: GPU nodes per training step; > 1 launches a TrainJob/PyTorchJob.
        train_job_kind: ``trainjob`` (Kubeflow Trainer v2) or ``pytorchjob``.
        trainer_release: the cluster's Trainer release for launchers that may not read
            its CRD (``2.1``, ``2.2``, ``2.3``); empty: the launcher reads the CRD.
        gpu_node_label_key: node label of the GPU pool.
        gpu_node_label_value: its value.
        shm_size: memory-backed ``/dev/shm`` of GPU tasks.
        object_store_secret: Secret with the S3 credentials.
        mlflow_secret: Secret with the MLflow credentials.
        object_store_config: ConfigMap with the S3 endpoint and region.
        pipeline_config: ConfigMap with the MLflow tracking URI and experiment.
        retries: retry tasks (preemptible nodes); ``run_local`` turns them off.
        task_deadline_scale: multiplies every task's deadline (pod
            ``activeDeadlineSeconds``); raise it for datasets larger than DeepFashion-C.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: str = DEFAULT_IMAGE
    gpus_per_step: int = Field(1, ge=0)
    train_nodes: int = Field(1, ge=1)
    train_job_kind: Literal["trainjob", "pytorchjob"] = "trainjob"
    trainer_release: Literal["", "2.1", "2.2", "2.3"] = ""
    gpu_node_label_key: str = Field("node-pool", min_length=1)
    gpu_node_label_value: str = Field("gpu", min_length=1)
    shm_size: str = Field("16Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)?$")
    object_store_secret: str = "object-store-credentials"
    mlflow_secret: str = "mlflow-credentials"
    object_store_config: str = "object-store-config"
    pipeline_config: str = "pipeline-config"
    retries: bool = True
    task_deadline_scale: float = Field(1.0, gt=0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> CompileSettings:
        """Settings from ``FA_*`` variables (see :data:`ENV_NAMES`), then ``overrides``.

        Raises:
            SettingsError: a value of the wrong type or out of range, naming the variable.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field, name in ENV_NAMES.items():
            if env.get(name, "") != "":
                values[field] = env[name]
        if "retries" in values:
            values["retries"] = str(values["retries"]) != "0"
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0])
            source = ENV_NAMES.get(field, field)
            raise SettingsError(
                f"compile setting {field} ({source}={values.get(field)!r}): {first['msg']}. "
                f"Fix: set {source} to a valid value (python -m pipelines.retraining --help)"
            ) from None

    @property
    def pinned(self) -> bool:
        """The image is referenced by digest (``@sha256:...``), as a cluster needs."""
        return bool(_DIGEST.search(self.image))

    @property
    def gpu_tasks(self) -> int:
        """Tasks on the GPU pool: training (single node), audit, evaluation, registration."""
        if self.gpus_per_step == 0:
            return 0
        return 3 if self.train_nodes > 1 else 5

    def check_for_cluster(self) -> None:
        """Refuse settings no cluster can run: an image that is not pinned by digest.

        Raises:
            SettingsError: naming the image and the fix.
        """
        if not self.pinned:
            raise SettingsError(
                f"the image {self.image!r} is not pinned by digest: a tag can be moved or "
                "re-pushed (nodes could run mixed code), and a local tag cannot be pulled by "
                "any cluster. Fix: `make image IMAGE=<registry>/fashion-attr:<tag> PUSH=1` "
                "(it records the pushed digest in build/image.json, which `make compile` "
                "uses), or pass --image <registry>/fashion-attr@sha256:<digest>"
            )

    def summary(self) -> str:
        """One line for the pipeline's description and the compile output."""
        gpus = (
            f"{self.gpus_per_step} GPU(s) per training pod on {self.train_nodes} node(s) "
            f"({self.gpu_tasks} tasks on the GPU pool {self.gpu_node_label_key}="
            f"{self.gpu_node_label_value})"
            if self.gpus_per_step
            else "CPU only (no task requests a GPU)"
        )
        kind = f", multi-node as {self.train_job_kind}" if self.train_nodes > 1 else ""
        return f"image {self.image}; code {code_version()}; {gpus}{kind}"

    def to_json(self) -> str:
        """The settings as one line of JSON (the compiled package's header)."""
        return json.dumps({"code_version": code_version(), **self.model_dump()}, sort_keys=True)


#: The environment variable of each setting (``make compile`` and older scripts).
ENV_NAMES: dict[str, str] = {
    "image": "FA_IMAGE",
    "gpus_per_step": "FA_GPUS_PER_STEP",
    "train_nodes": "FA_TRAIN_NODES",
    "train_job_kind": "FA_TRAIN_JOB_KIND",
    "trainer_release": "FA_TRAINER_RELEASE",
    "gpu_node_label_key": "FA_GPU_NODE_LABEL_KEY",
    "gpu_node_label_value": "FA_GPU_NODE_LABEL_VALUE",
    "shm_size": "FA_SHM_SIZE",
    "object_store_secret": "FA_OBJECT_STORE_SECRET",
    "mlflow_secret": "FA_MLFLOW_SECRET",
    "object_store_config": "FA_OBJECT_STORE_CONFIG",
    "pipeline_config": "FA_PIPELINE_CONFIG",
    "retries": "FA_RETRIES",
    "task_deadline_scale": "FA_TASK_DEADLINE_SCALE",
}


def read_settings(package: str | os.PathLike[str]) -> tuple[CompileSettings, str]:
    """The settings and code version a compiled package was built with.

    Raises:
        SettingsError: the file is missing or was not compiled by this project (names the
            file and the fix).
    """
    path = Path(package)
    try:
        head = path.read_text().splitlines()[:40]
    except FileNotFoundError:
        raise SettingsError(
            f"{path}: no compiled pipeline. Fix: run `make compile` (or python -m "
            "pipelines.retraining --output ...) first"
        ) from None
    for line in head:
        if line.startswith(SETTINGS_MARKER):
            data = json.loads(line[len(SETTINGS_MARKER) :])
            code = str(data.pop("code_version", ""))
            return CompileSettings(**data), code
    raise SettingsError(
        f"{path} has no '{SETTINGS_MARKER.strip()}' line: it was not compiled by "
        "pipelines.retraining of this project (or by an older version). Fix: recompile it "
        "with `make compile`"
    )
