"""Bake torchvision's pretrained weights into the image (builder stage of docker/Dockerfile).

torchvision loads ImageNet weights from ``$TORCH_HOME/hub/checkpoints/<file name>`` and goes
to the network only when that file is missing, so weights copied there at build time let a
GPU node without internet access start from them. The files keep their published names,
which carry the first hex digits of their sha256 (``vgg16-397923af.pth``): every file is
checked against that prefix, and against a full sha256 when one is given, so a truncated or
substituted file fails the build instead of the training run.

Sources, both optional (with neither, nothing is baked and the build goes on):

* ``--from-dir DIR``: every ``*.pth`` in DIR (the build context's ``weights/`` folder);
* ``--urls "URL ..." --sha256 "SUM ..."``: downloads, one sha256 per URL, same order.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# torch.hub's convention for checkpoint names: <name>-<leading hex digits of sha256>.<ext>
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")


class WeightsError(ValueError):
    """A weights file or build argument that cannot be baked as given."""


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks.

    Args:
        path: the file.

    Returns:
        The lowercase hex digest.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected_sha256: str | None = None) -> str:
    """Check a weights file against its name's hash prefix and an optional full sha256.

    Args:
        path: the weights file, named as torchvision publishes it.
        expected_sha256: the full hex sha256 it must have, if known.

    Returns:
        The file's sha256.

    Raises:
        WeightsError: the file does not match, or nothing is known to check it against.
    """
    actual = sha256_of(path)
    match = _HASH_PREFIX.search(path.name)
    if match is None and expected_sha256 is None:
        raise WeightsError(
            f"{path.name}: the name carries no sha256 prefix (torchvision names files like "
            "vgg16-397923af.pth) and no sha256 was given. Fix: keep the published file name, "
            "or pass its sha256 with --sha256 / IMAGENET_WEIGHTS_SHA256"
        )
    if match is not None and not actual.startswith(match.group(1)):
        raise WeightsError(
            f"{path.name}: sha256 {actual} does not start with {match.group(1)} from its "
            "name: the file is damaged or not the published one. Fix: download it again"
        )
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise WeightsError(
            f"{path.name}: sha256 {actual} != expected {expected_sha256}. Fix: correct the "
            "sum in IMAGENET_WEIGHTS_SHA256 or the URL in IMAGENET_WEIGHTS_URL"
        )
    return actual


def bake(
    target: Path,
    from_dir: Path | None = None,
    urls: Sequence[str] = (),
    sums: Sequence[str] = (),
) -> list[Path]:
    """Copy or download weights into ``target`` and verify each one.

    Args:
        target: torchvision's checkpoint folder, ``$TORCH_HOME/hub/checkpoints``.
        from_dir: a folder whose ``*.pth`` files are copied; ignored when it does not exist.
        urls: weights to download (any scheme urllib opens).
        sums: the full sha256 of each URL, in the same order.

    Returns:
        The baked files, sorted by name.

    Raises:
        WeightsError: URL and sum counts differ, or a file fails :func:`verify`.
    """
    if len(urls) != len(sums):
        raise WeightsError(
            f"IMAGENET_WEIGHTS_URL has {len(urls)} URL(s) but IMAGENET_WEIGHTS_SHA256 has "
            f"{len(sums)} sum(s). Fix: give one sha256 per URL, in the same order"
        )
    target.mkdir(parents=True, exist_ok=True)
    if from_dir is not None and from_dir.is_dir():
        for source in sorted(from_dir.glob("*.pth")):
            verify(source)
            shutil.copyfile(source, target / source.name)
    for url, expected in zip(urls, sums, strict=True):
        destination = target / url.rsplit("/", 1)[-1]
        with urllib.request.urlopen(url) as response, destination.open("wb") as out:
            shutil.copyfileobj(response, out)
        try:
            verify(destination, expected)
        except WeightsError:
            destination.unlink()
            raise
    return sorted(target.glob("*.pth"))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the Dockerfile's weights step.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        0 on success, 2 when a file or argument is rejected.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, required=True, help="$TORCH_HOME/hub/checkpoints")
    parser.add_argument("--from-dir", type=Path, default=None, help="folder of *.pth files")
    parser.add_argument("--urls", default="", help="space-separated weight URLs")
    parser.add_argument("--sha256", default="", help="space-separated sha256, one per URL")
    args = parser.parse_args(argv)
    try:
        baked = bake(args.target, args.from_dir, args.urls.split(), args.sha256.split())
    except WeightsError as err:
        print(f"bake_weights: {err}", file=sys.stderr)
        return 2
    for path in baked:
        print(f"baked weights: {path.name} ({path.stat().st_size} bytes)")
    if not baked:
        print("no weights baked: pretrained backbones will be fetched at run time, if allowed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
