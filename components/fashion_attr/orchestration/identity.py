"""What names a step's output, and what tells two attempts of a task apart.

- :func:`output_key`: a step's output folder ``<storage>/runs/<step>/<key>`` is named by
  everything that changes its result: the dataset version, the resolved config, the
  code version (:func:`fashion_attr.version.code_version`: the package version and a
  digest of its sources) and the image, and the placement (GPUs per node, nodes, job
  kind: the world size changes the batch statistics and the checkpoint's layout). So an
  upgrade or a GPU-count change trains afresh in a new folder, and identical inputs find
  their finished result again.
- :func:`training_key`: the same identity for a whole training (GAN + classifier +
  evaluation), recorded on the registered model version; a run whose key is already
  registered has nothing new to learn (the DAG skips its GPU tasks).
- :func:`attempt_fingerprint`: the inputs a failed attempt saw (parameters, a hash of
  the credentials in the environment, and the size and stamp of the files the
  parameters name), so that a retry with the same inputs fails at once while a retry
  after a fix (a new secret, a corrected batch file) runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fashion_attr import storage
from fashion_attr.version import code_version

__all__ = ["Placement", "attempt_fingerprint", "output_key", "training_key"]

#: Environment variables whose values an attempt depends on (hashed, never stored).
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
#: Objects of a prefix stamped at most (a prefix with more is stamped by its first ones).
MAX_STAMPED = 10_000


@dataclass(frozen=True)
class Placement:
    """Where a training step runs.

    Attributes:
        gpus: GPUs per node; 0 runs on what the config's ``device`` says (the CPU on a
            machine without CUDA); 1 needs CUDA; more run ``torchrun`` over them.
        nodes: GPU nodes; more than 1 submits a cluster training job.
        job_kind: ``trainjob`` (Kubeflow Trainer) or ``pytorchjob`` (Training Operator).
        image: the project image the job's pods run (needed with ``nodes > 1``).
    """

    gpus: int = 0
    nodes: int = 1
    job_kind: str = "trainjob"
    image: str | None = None

    def identity(self) -> dict[str, Any]:
        """The parts of the placement that change a training's result or checkpoint."""
        return {
            "gpus": self.gpus,
            "nodes": self.nodes,
            "job_kind": self.job_kind if self.nodes > 1 else None,
            "image": self.image,
        }


def _digest(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def output_key(*, placement: Placement | None = None, **parts: Any) -> str:
    """16 hex naming a step's output: ``parts``, the code version and the placement."""
    identity = {
        **parts,
        "code": code_version(),
        "placement": (placement or Placement()).identity(),
    }
    return _digest(identity)[:16]


def training_key(**parts: Any) -> str:
    """The identity of a whole training (see the module docstring): 24 hex."""
    return _digest({**parts, "code": code_version()})[:24]


def _stamp(value: str) -> Any:
    """Size and stamp of a file, or of a folder's or prefix's files; None if absent.

    A folder or prefix gives its first :data:`MAX_STAMPED` files by path.
    """
    from fashion_attr.data.fingerprints import fingerprint_tree

    if not storage.is_s3(value) and not os.path.exists(value):
        return None
    try:
        if storage.is_s3(value) and storage.exists(value):
            bucket, key = storage.split_s3(value)
            head = storage.s3_client().head_object(Bucket=bucket, Key=key)
            return [int(head["ContentLength"]), str(head["ETag"])]
        if os.path.isfile(value):
            st = os.stat(value)
            return [st.st_size, st.st_mtime_ns]
        tree = fingerprint_tree(value)
    except Exception as exc:  # an unreadable input: the attempt will say so itself
        return f"unreadable: {type(exc).__name__}"
    return sorted(tree.items())[:MAX_STAMPED]


def attempt_fingerprint(inputs: Mapping[str, Any], stamped: Sequence[str] = ()) -> str:
    """A digest of what a task attempt depended on (see the module docstring).

    Args:
        inputs: the task's parameters.
        stamped: files or folders/prefixes (a batch file, a source's ``Anno/``) whose
            sizes and modification stamps enter the digest: a fix to one reruns the task.
    """
    credentials = hashlib.sha256(
        "\0".join(os.environ.get(name, "") for name in CREDENTIAL_ENV).encode()
    ).hexdigest()
    stamps = {uri: _stamp(uri) for uri in sorted(set(stamped)) if uri}
    return _digest({"inputs": dict(inputs), "credentials": credentials, "stamps": stamps})
