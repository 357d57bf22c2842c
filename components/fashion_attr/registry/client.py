"""Ask a served model about a photo: ``python -m fashion_attr.registry.client PHOTO [--bbox ...]``.

Posts the image (base64) and, when given, the garment's box to the ``/invocations``
endpoint of ``mlflow models serve`` (``make serve``) and prints the answer: the
category and, per attribute group, the attributes above the threshold and the
top k. The model was trained on garment crops: pass ``--bbox x1,y1,x2,y2`` (the
garment's box in the photo's pixels) for the answer the model was trained to give.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

__all__ = ["classify", "main", "request_body"]


def request_body(photo: bytes, bbox: Sequence[float] | None = None) -> dict[str, Any]:
    """The ``/invocations`` JSON body for one photo (and its garment box, if known)."""
    row: list[Any] = [base64.b64encode(photo).decode("ascii")]
    columns = ["image"]
    if bbox is not None:
        columns.append("bbox")
        row.append([float(v) for v in bbox])
    return {"dataframe_split": {"columns": columns, "data": [row]}}


def classify(
    photo: bytes, url: str, bbox: Sequence[float] | None = None, timeout_s: float = 60.0
) -> dict[str, Any]:
    """Send one photo to a served model; returns its answer.

    Raises:
        RuntimeError: the server refused the request (its message) or could not be reached.
    """
    body = json.dumps(request_body(photo, bbox)).encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/invocations", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url} answered {exc.code}: {exc.read().decode()[:500]}") from None
    except urllib.error.URLError as exc:
        raise RuntimeError(
            f"nothing answers at {url} ({exc.reason}). Fix: start the server with `make serve`"
        ) from None
    return cast(dict[str, Any], answer["predictions"][0])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the answer for one photo."""
    p = argparse.ArgumentParser(prog="python -m fashion_attr.registry.client", description=__doc__)
    p.add_argument("photo", help="a JPEG or PNG file")
    p.add_argument("--bbox", default=None, help="the garment's box: x1,y1,x2,y2 (pixels)")
    p.add_argument("--url", default="http://127.0.0.1:5001", help="the served model")
    args = p.parse_args(argv)
    try:
        photo = Path(args.photo).read_bytes()
    except OSError as exc:
        print(f"client: error: {args.photo}: {exc.strerror}", file=sys.stderr)
        return 2
    bbox = None
    if args.bbox:
        try:
            bbox = [float(v) for v in args.bbox.split(",")]
        except ValueError:
            bbox = []
        if len(bbox) != 4:
            print(f"client: error: --bbox {args.bbox!r}: write it as x1,y1,x2,y2", file=sys.stderr)
            return 2
    try:
        answer = classify(photo, args.url, bbox)
    except RuntimeError as exc:
        print(f"client: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
