"""Which registered model version a training identity already produced.

The DAG's ``plan`` task asks, before any GPU task is scheduled, whether a version with
this run's training key (:func:`fashion_attr.orchestration.identity.training_key`:
dataset version, code version, resolved configs, placement) is registered already. If
one is, the run has nothing new to learn: retraining would reproduce that version
(champion or a challenger the gate kept out), so the GPU tasks are skipped.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from fashion_attr.registry.mlflow_registry import (
    CHAMPION,
    _mlflow_errors,
    use_tracking_uri,
)

__all__ = ["TRAINING_KEY_TAG", "LineageMatch", "find_trained"]

#: Version tag holding the training key of the run that registered it.
TRAINING_KEY_TAG = "training_key"


class LineageMatch:
    """A registered version with the same training key.

    Attributes:
        name: the registered model.
        version: the version.
        champion: whether it holds alias ``champion``.
        champion_version: the current champion (None if there is none).
        dataset_version: its dataset version tag.
        code_version: its code version tag.
    """

    def __init__(self, mv: ModelVersion, champion_version: str | None) -> None:
        tags = mv.tags or {}
        self.name, self.version = mv.name, str(mv.version)
        self.champion_version = champion_version
        self.champion = champion_version == self.version
        self.dataset_version = tags.get("dataset_version")
        self.code_version = tags.get("code_version")


def find_trained(
    model_name: str, training_key: str, *, tracking_uri: str | None = None
) -> LineageMatch | None:
    """The oldest version of ``model_name`` registered with ``training_key``, or None.

    Raises:
        RegistryError: MLflow failed (names the server and the fix).
        RegistryAuthError: MLflow refused the credentials.
    """
    with use_tracking_uri(tracking_uri), _mlflow_errors(f"the lineage look-up of {model_name!r}"):
        client = MlflowClient()
        try:
            client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None  # the first run: nothing was ever registered
            raise
        found: list[ModelVersion] = client.search_model_versions(
            filter_string=f"name = '{model_name}' and tags.`{TRAINING_KEY_TAG}` = '{training_key}'"
        )
        found = [mv for mv in found if (mv.tags or {}).get(TRAINING_KEY_TAG) == training_key]
        if not found:
            return None
        aliases = client.get_registered_model(model_name).aliases or {}
        champion = aliases.get(CHAMPION)
        return LineageMatch(
            min(found, key=lambda mv: int(mv.version)),
            str(champion) if champion is not None else None,
        )
