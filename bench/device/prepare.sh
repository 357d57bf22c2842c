#!/usr/bin/env bash
# Stage, on THIS machine (it has PyPI), what the lent GPU machine lacks, into .device/
# (git-ignored; pass it to the device tool as `carry: [".device"]`):
#   - wheels of the project's import-time needs that the GPU image does not ship
#     (pydantic and its helpers; torch, numpy, PIL, yaml, tqdm are there), for
#     the GPU image's Python 3.12, at the versions this checkout is tested with;
#   - the shared anchors (../shared/bench/*.py) and the MNIST IDX files
#     (../shared/data/mnist), which do not travel with the working tree;
#   - COMMIT: the commit the figures belong to (the tree travels without .git).
# Usage: bash bench/device/prepare.sh   (then see bench/device/gpu_checks.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared}
DEST=.device

for f in "$SHARED/bench/gpu_anchor.py" "$SHARED/bench/gan_loader_anchor.py"; do
    [[ -f $f ]] || { echo "prepare.sh: $f not found; set SHARED=/path/to/shared" >&2; exit 2; }
done
[[ -x $PY ]] || { echo "prepare.sh: $PY not found; run 'make install' first" >&2; exit 2; }

pins=$("$PY" - <<'PYEOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
      ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
       "typing-extensions")))
PYEOF
)

rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp/whl" "$DEST.tmp/anchors" "$DEST.tmp/mnist"
# shellcheck disable=SC2086  # $pins is a list of requirement strings
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST.tmp/whl" $pins
cp "$SHARED"/bench/*.py "$DEST.tmp/anchors/"
if [[ -d $SHARED/data/mnist ]]; then cp "$SHARED"/data/mnist/*.gz "$DEST.tmp/mnist/"; fi
git rev-parse HEAD >"$DEST.tmp/COMMIT"
if ! git diff --quiet HEAD 2>/dev/null; then echo "dirty" >>"$DEST.tmp/COMMIT"; fi
# Swap in whole, so a failed download never leaves a half-filled .device behind.
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "staged $(du -sh "$DEST" | cut -f1) in $DEST: $pins"
