"""Shared command-line plumbing of the pipeline steps.

Every step module exposes ``main(argv: Sequence[str] | None = None) -> int``,
called the same way by the container, the KFP component, a test and a
developer. Exit codes: 0 success, 2 bad input or configuration (the message
names the field/file and the fix), 3 a numerical or runtime failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from fashion_attr.config import PRESETS, ConfigError

__all__ = ["add_config_args", "run_cli", "scrub_tracking_uri"]

EXIT_OK, EXIT_INPUT, EXIT_RUNTIME = 0, 2, 3


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset``, ``--config`` and repeated ``--set key=value``."""
    parser.add_argument("--preset", choices=PRESETS, default=None, help="Shipped preset.")
    parser.add_argument("--config", default=None, help="YAML file (step section or all).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a field (dotted keys for nested fields), e.g. --set deact.lambda=1e-3.",
    )


def scrub_tracking_uri() -> None:
    """Move ``user:password@`` out of ``MLFLOW_TRACKING_URI`` into the MLflow credential variables.

    MLflow echoes the tracking URI into the log when a run ends; see
    :func:`fashion_attr.registry.mlflow_registry.adopt_uri_credentials`. Imports MLflow
    only when the URI holds credentials.
    """
    if "@" in os.environ.get("MLFLOW_TRACKING_URI", ""):
        from fashion_attr.registry.mlflow_registry import adopt_uri_credentials

        adopt_uri_credentials()


def run_cli(name: str, body: Callable[[], dict[str, Any]]) -> int:
    """Run a step body, print its JSON summary, and map failures to exit codes."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from fashion_attr.data.annotations import AnnotationError
    from fashion_attr.storage import StorageError

    scrub_tracking_uri()
    try:
        summary = body()
    except (ConfigError, AnnotationError, FileNotFoundError, ValueError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except StorageError as exc:
        print(f"{name}: storage error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except RuntimeError as exc:
        print(f"{name}: failed: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(json.dumps(summary, sort_keys=True, default=str))
    return EXIT_OK
