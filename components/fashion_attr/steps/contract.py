"""The contract every pipeline step keeps: a typed result, clean errors, exit codes.

Each step module (``preprocess``, ``train_gan``, ``train_classifier``,
``evaluate``, ``register``) exposes

- ``run(config, ...) -> <Step>Result``: the work, on a resolved config; the
  result is a :class:`StepResult` naming every output URI and the step's
  summary figures, and is also written to ``<out>/result.json``;
- ``main(argv) -> int``: parses the command line, resolves the config, calls
  ``run`` through :func:`run_cli` and prints the result as JSON.

Whoever runs a step (a developer, a test, the executor under ``torchrun`` or in
a cluster job, the KFP adapter) reads its outputs from the result, never from
guessed file names.

Exit codes: 0 success; 2 a user error (bad input, configuration or
credentials: the message names the file, line or field and the fix; retrying
cannot help); 3 a fault (a numerical failure, a storage or server failure);
130 interrupted (Ctrl-C; a training step resumes when rerun). A training
step run with ``--record-error`` (as the executor runs it under ``torchrun``
or in a cluster job) also writes a failure to ``<out>/error.json`` (exit code
and message), so that the process that launched it can raise the same message.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from fashion_attr import storage
from fashion_attr.config import PRESETS
from fashion_attr.results import RESULT_NAME, StepResult
from fashion_attr.storage import StorageError

__all__ = [
    "ERROR_NAME",
    "EXIT_FAULT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USER",
    "RESULT_NAME",
    "StepError",
    "StepResult",
    "add_config_args",
    "add_training_args",
    "exit_code_for",
    "is_rank0",
    "read_error",
    "run_cli",
    "scrub_tracking_uri",
    "skip_final_collections",
    "step_parser",
    "write_error",
]

EXIT_OK, EXIT_USER, EXIT_FAULT, EXIT_INTERRUPTED = 0, 2, 3, 130
ERROR_NAME = "error.json"

log = logging.getLogger(__name__)


class StepError(RuntimeError):
    """A step that ran elsewhere (``torchrun``, a cluster job, an earlier attempt) failed.

    Attributes:
        exit_code: the step's exit code (2 user error, 3 fault).
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAULT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _user_error_types() -> tuple[type[BaseException], ...]:
    # ValueError covers ConfigError, AnnotationError, IngestError, ManifestError and
    # RegistryAuthError; StorageError is raised only for failures no retry can fix
    # (missing bucket, refused credentials).
    return (ValueError, FileNotFoundError, StorageError)


def exit_code_for(exc: BaseException) -> int:
    """The exit code a step ends with after ``exc`` (see the module docstring)."""
    if isinstance(exc, StepError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if getattr(exc, "retryable", False):  # e.g. an object store that could not be reached
        return EXIT_FAULT
    return EXIT_USER if isinstance(exc, _user_error_types()) else EXIT_FAULT


def write_error(out: str, exc: BaseException) -> None:
    """Record a failure in ``<out>/error.json`` (best effort: never masks ``exc``)."""
    record = {
        "exit_code": exit_code_for(exc),
        "message": str(exc),
        "type": type(exc).__name__,
        "rank": int(os.environ.get("RANK", "0")),
    }
    try:
        storage.write_text(storage.join(out, ERROR_NAME), json.dumps(record) + "\n")
    except Exception as write_exc:  # the step's own error is what matters
        log.warning("could not record the error in %s: %s", out, write_exc)


def read_error(out: str) -> StepError | None:
    """The failure recorded in ``<out>/error.json``, if any."""
    uri = storage.join(out, ERROR_NAME)
    try:
        record = json.loads(storage.read_text(uri))
        return StepError(str(record["message"]), int(record["exit_code"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return StepError(f"{uri} is unreadable; see the step's log", EXIT_FAULT)


def clear_error(out: str) -> None:
    """Remove a failure record left by an earlier attempt (before a new attempt)."""
    storage.delete(storage.join(out, ERROR_NAME))


def scrub_tracking_uri() -> None:
    """Move ``user:password@`` out of ``MLFLOW_TRACKING_URI`` before anything logs it.

    See :func:`fashion_attr.credentials.adopt_uri_credentials`.
    """
    from fashion_attr.credentials import adopt_uri_credentials

    adopt_uri_credentials()


#: Set by ``--verbose`` (read and reset by :func:`run_cli`): print a failure's traceback.
_VERBOSE: dict[str, bool] = {}


class _VerboseAction(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, True)
        _VERBOSE["on"] = True


def step_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """A step's parser: ``python -m fashion_attr.steps.<name>``, its docstring kept as written.

    Every step takes ``--verbose``: a failure then also prints its traceback (by default it
    prints one line naming what failed and the fix).
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m fashion_attr.steps.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--verbose",
        action=_VerboseAction,
        nargs=0,
        default=False,
        help="on failure, also print the traceback",
    )
    return parser


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset``, ``--config`` and repeated ``--set key=value``."""
    parser.add_argument("--preset", choices=PRESETS, default=None, help="shipped preset")
    parser.add_argument(
        "--config", default=None, help="YAML file or URI (the step's section, or all sections)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field (dotted keys for nested fields), e.g. --set deact.lambda=1e-3",
    )


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The flags both training steps take: data, output, cache, resume, error record, config."""
    parser.add_argument("--data", required=True, help="dataset version URI (has manifest.json)")
    parser.add_argument("--out", required=True, help="output URI (local folder or s3://)")
    parser.add_argument("--cache-dir", default=None, help="local shard cache")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument(
        "--record-error",
        action="store_true",
        help="on failure write <out>/error.json (the executor reads it under torchrun/a job)",
    )
    parser.add_argument(
        "--require-gpus",
        type=int,
        default=0,
        metavar="N",
        help="fail (exit 3) unless CUDA can use N GPUs here (a cluster job's pods pass it)",
    )
    add_config_args(parser)


def run_cli(
    name: str,
    body: Callable[[], StepResult],
    *,
    out: str | None = None,
    resumable: bool = False,
) -> int:
    """Run a step body, print its result as JSON, and map failures to exit codes.

    Args:
        name: the step, for messages.
        body: calls the step's ``run`` and returns its result.
        out: the step's output folder: a failure is recorded there (``error.json``).
        resumable: the step resumes from its checkpoint when rerun (said on Ctrl-C).

    Returns:
        The exit code (module docstring).
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    scrub_tracking_uri()
    verbose = _VERBOSE.pop("on", False)
    if out is not None and is_rank0():
        clear_error(out)  # a failure of an earlier attempt is no longer the state
    try:
        result = body()
        skip_final_collections()
    except KeyboardInterrupt as exc:
        again = (
            "rerun the same command to resume from its last checkpoint"
            if resumable
            else "rerun the same command to start it again"
        )
        print(f"\n{name}: interrupted; {again}.", file=sys.stderr)
        if out is not None:
            write_error(out, exc)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = exit_code_for(exc)
        known = code == EXIT_USER or isinstance(exc, RuntimeError)
        if not known or verbose:  # a bug: keep the traceback for the report
            traceback.print_exc()
        kind = "error" if code == EXIT_USER else "failed"
        if isinstance(exc, StorageError):
            kind = f"storage {kind}"
        print(f"{name}: {kind}: {exc}", file=sys.stderr)
        if out is not None:
            write_error(out, exc)
        return code
    print(result.to_json())
    return EXIT_OK


def skip_final_collections() -> None:
    """Exit in a fraction of a second once the step's work is done.

    A process that trained with torch holds millions of objects; the garbage
    collections of interpreter shutdown walk them all again (1.2 s measured for the
    tiny GAN step on the 2-core machine, 0.26 s with this call). Freezing moves every
    live object out of the collector's sight; files are still flushed and closed and
    ``atexit`` handlers still run.
    """
    gc.freeze()


def is_rank0() -> bool:
    """Whether this process is rank 0 of a ``torchrun`` job (or runs alone)."""
    return int(os.environ.get("RANK", "0")) == 0
