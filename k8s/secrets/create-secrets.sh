#!/usr/bin/env bash
# Create or update Secrets from local files that are never committed: for each
# k8s/secrets/NAME.example.env, a filled-in copy k8s/secrets/NAME.env becomes Secret NAME;
# k8s/secrets/basic_auth.ini becomes Secret mlflow-auth-config.
#
#   k8s/secrets/create-secrets.sh [NAMESPACE]                  every Secret (default fashion-attr)
#   k8s/secrets/create-secrets.sh --pipeline-only NAMESPACE    only the pipeline's two Secrets
#
# Two kinds of Secret (k8s/secrets/README.md):
#   pipeline  object-store-credentials (the pipeline's own S3 key, not MinIO's root) and
#             mlflow-credentials (its non-admin MLflow user): read by the pipeline's steps
#             and training pods, wherever those run
#   server    minio-root-credentials, postgres-credentials, mlflow-db, mlflow-auth,
#             mlflow-object-store-credentials, mlflow-auth-config: read only by MLflow, MinIO,
#             PostgreSQL and the minio-setup Job, in the services' namespace (fashion-attr)
# Standalone KFP runs the pipeline in its own namespace, kubeflow, where KFP's pipeline-runner
# Role grants `get` on every Secret (no resourceNames; manifests/kustomize/base/pipeline/
# pipeline-runner-role.yaml @2.17.0): any pipeline pod there can read any Secret by name.
# The server Secrets are therefore refused for kubeflow; use --pipeline-only there.
#
# Without --pipeline-only, a Secret whose file is absent is skipped with a note (the cloud
# overlay uses neither postgres-credentials nor minio-root-credentials); with it, both files
# are required. Every file is checked before anything is created. Server-side apply: the
# values do not end up in a last-applied-configuration annotation, and never on a command
# line (kubectl reads them from the files).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prog="k8s/secrets/$(basename "${BASH_SOURCE[0]}")"

pipeline_secrets=(object-store-credentials mlflow-credentials)
server_secrets=(minio-root-credentials postgres-credentials mlflow-db mlflow-auth
  mlflow-object-store-credentials mlflow-auth-config)
# Namespaces where pipelines of anyone may read every Secret: pipeline Secrets only.
pipeline_only_namespaces=(kubeflow)

usage() {
  cat <<EOF
usage: $prog [NAMESPACE]                  all Secrets (default namespace: fashion-attr)
       $prog --pipeline-only NAMESPACE    only ${pipeline_secrets[*]}
EOF
}

contains() {  # WORD LIST...: whether WORD is one of LIST
  local word="$1" item
  shift
  for item in "$@"; do [[ "$item" == "$word" ]] && return 0; done
  return 1
}

pipeline_only=0
positional=()
while (($#)); do
  case "$1" in
    --pipeline-only) pipeline_only=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) positional+=("$1") ;;
  esac
  shift
done
if ((${#positional[@]} > 1)); then
  usage >&2
  exit 2
fi
namespace="${positional[0]:-fashion-attr}"
if [[ ! "$namespace" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]]; then
  echo "error: $namespace is not a namespace name (a DNS-1123 label)" >&2
  exit 2
fi

if ((!pipeline_only)) && contains "$namespace" "${pipeline_only_namespaces[@]}"; then
  cat >&2 <<EOF
error: refusing to create the server Secrets in namespace $namespace
  (${server_secrets[*]}).
  Standalone KFP runs pipelines in $namespace, and its pipeline-runner Role may read every
  Secret there: any pipeline pod could read MinIO's root key, PostgreSQL's password and
  MLflow's admin account. The pipeline's pods need only ${pipeline_secrets[*]}.
  Fix: $prog --pipeline-only $namespace
  (the server Secrets belong in the services' namespace: $prog fashion-attr)
EOF
  exit 1
fi

# name -> file and kubectl arguments, checked before anything is created.
names=()
sources=()
for example in "$here"/*.example.env; do
  name="$(basename "$example" .example.env)"
  if ! contains "$name" "${pipeline_secrets[@]}" "${server_secrets[@]}"; then
    echo "error: $example is neither a pipeline nor a server Secret: add $name to" \
      "pipeline_secrets or server_secrets in $prog" >&2
    exit 1
  fi
  if ((pipeline_only)) && ! contains "$name" "${pipeline_secrets[@]}"; then
    continue
  fi
  env_file="$here/$name.env"
  if [[ ! -f "$env_file" ]]; then
    if ((pipeline_only)); then
      echo "error: no $env_file: the pipeline's pods need Secret $name (copy $example and" \
        "fill it in)" >&2
      exit 1
    fi
    echo "skip $name: no $env_file (copy $example and fill it in)" >&2
    continue
  fi
  if grep -Eq '^[A-Za-z_]+=$' "$env_file"; then
    echo "error: $env_file has empty values: $(grep -E '^[A-Za-z_]+=$' "$env_file" | tr '\n' ' ')" >&2
    exit 1
  fi
  names+=("$name")
  sources+=("--from-env-file=$env_file")
done
if ((!pipeline_only)); then
  if [[ -f "$here/basic_auth.ini" ]]; then
    names+=(mlflow-auth-config)
    sources+=("--from-file=basic_auth.ini=$here/basic_auth.ini")
  else
    echo "skip mlflow-auth-config: no $here/basic_auth.ini (copy basic_auth.example.ini)" >&2
  fi
fi

apply_secret() {  # NAME, then kubectl create secret generic arguments
  local name="$1"
  shift
  kubectl create secret generic "$name" --namespace "$namespace" "$@" \
    --dry-run=client -o yaml | kubectl apply --server-side --field-manager=fashion-attr-secrets -f -
}

for i in "${!names[@]}"; do
  apply_secret "${names[$i]}" "${sources[$i]}"
done

if ((pipeline_only)); then
  # An earlier create-secrets.sh copied every Secret: name what is left to delete.
  leftover=()
  for name in "${server_secrets[@]}"; do
    if [[ -n "$(kubectl get secret "$name" --namespace "$namespace" --ignore-not-found \
      -o name 2>/dev/null || true)" ]]; then
      leftover+=("$name")
    fi
  done
  if ((${#leftover[@]})); then
    echo "warning: server Secrets exist in namespace $namespace, where the pipeline's pods" \
      "can read them: ${leftover[*]}" >&2
    echo "  delete them: kubectl --namespace $namespace delete secret ${leftover[*]}" >&2
  fi
fi
