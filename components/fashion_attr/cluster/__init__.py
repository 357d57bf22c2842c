"""Kubernetes: training jobs over several GPU nodes (render, submit or attach, wait).

The ground floor of the cluster side, with no other import of the project:
:mod:`~fashion_attr.cluster.jobs` (TrainJob / PyTorchJob rendering through a
``(kind, release)`` table), :mod:`~fashion_attr.cluster.release` (which Kubeflow Trainer
release a cluster runs), :mod:`~fashion_attr.cluster.kube` (API calls) and
:mod:`~fashion_attr.cluster.submit` (attach-or-submit, then wait).
"""

from fashion_attr.cluster.jobs import (
    DEFAULT_NODE_SELECTOR,
    MAX_NAME_LENGTH,
    TRAINING_SERVICE_ACCOUNT,
    job_name_for,
    render_job,
)
from fashion_attr.cluster.kube import in_cluster_namespace
from fashion_attr.cluster.release import (
    TRAINER_POD_FIELD,
    TRAINER_RELEASES,
    detect_trainer_release,
    trainer_release_from_crd,
)
from fashion_attr.cluster.submit import (
    JobResult,
    attach_or_submit,
    launch_and_wait,
    reap_orphans,
    run_step_on_cluster,
    wait_for_job,
)

__all__ = [
    "DEFAULT_NODE_SELECTOR",
    "MAX_NAME_LENGTH",
    "TRAINER_POD_FIELD",
    "TRAINER_RELEASES",
    "TRAINING_SERVICE_ACCOUNT",
    "JobResult",
    "attach_or_submit",
    "detect_trainer_release",
    "in_cluster_namespace",
    "job_name_for",
    "launch_and_wait",
    "reap_orphans",
    "render_job",
    "run_step_on_cluster",
    "trainer_release_from_crd",
    "wait_for_job",
]
