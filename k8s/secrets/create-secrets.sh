#!/usr/bin/env bash
# Create or update the namespace's Secrets from local files that are never committed:
# for each k8s/secrets/NAME.example.env, a filled-in copy k8s/secrets/NAME.env becomes
# Secret NAME; k8s/secrets/basic_auth.ini becomes Secret mlflow-auth-config.
#   cp k8s/secrets/mlflow-auth.example.env k8s/secrets/mlflow-auth.env   # fill it in, ...
#   k8s/secrets/create-secrets.sh [NAMESPACE]
# Secrets an overlay does not use (postgres-credentials, minio-root-credentials on the
# cloud overlay) are skipped with a note when their file is absent.
# Server-side apply: the values do not end up in a last-applied-configuration annotation.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
namespace="${1:-fashion-attr}"

apply_secret() {  # NAME, then kubectl create secret generic arguments
  local name="$1"
  shift
  kubectl create secret generic "$name" --namespace "$namespace" "$@" \
    --dry-run=client -o yaml | kubectl apply --server-side --field-manager=fashion-attr-secrets -f -
}

for example in "$here"/*.example.env; do
  name="$(basename "$example" .example.env)"
  env_file="$here/$name.env"
  if [[ ! -f "$env_file" ]]; then
    echo "skip $name: no $env_file (copy $example and fill it in)" >&2
    continue
  fi
  if grep -Eq '^[A-Za-z_]+=$' "$env_file"; then
    echo "error: $env_file has empty values: $(grep -E '^[A-Za-z_]+=$' "$env_file" | tr '\n' ' ')" >&2
    exit 1
  fi
  apply_secret "$name" --from-env-file="$env_file"
done
if [[ -f "$here/basic_auth.ini" ]]; then
  apply_secret mlflow-auth-config --from-file=basic_auth.ini="$here/basic_auth.ini"
else
  echo "skip mlflow-auth-config: no $here/basic_auth.ini (copy basic_auth.example.ini)" >&2
fi
