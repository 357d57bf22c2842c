#!/bin/sh
# Run by the minio-setup Job. Idempotent: every command creates or updates.
set -eu

echo "waiting for MinIO at ${MINIO_URL}"
until mc alias set local "${MINIO_URL}" "${MINIO_ROOT_USER}" "${MINIO_ROOT_PASSWORD}" >/dev/null 2>&1; do
  sleep 5
done

mc mb --ignore-existing "local/${BUCKET}"

# Re-creating a policy replaces its statements, so an edited JSON takes effect here.
mc admin policy create local fashion-attr-pipeline /policies/pipeline-policy.json
mc admin policy create local fashion-attr-mlflow /policies/mlflow-policy.json

# Adding an existing user sets its secret key: a rotated key in the Secret takes effect here.
mc admin user add local "${PIPELINE_ACCESS_KEY}" "${PIPELINE_SECRET_KEY}"
mc admin user add local "${MLFLOW_ACCESS_KEY}" "${MLFLOW_SECRET_KEY}"

attach() {
  # attach POLICY USER; attaching twice is an error in mc, so look first.
  if mc admin user info local "$2" | grep -q "$1"; then
    echo "policy $1 already attached to $2"
  else
    mc admin policy attach local "$1" --user "$2"
  fi
}
attach fashion-attr-pipeline "${PIPELINE_ACCESS_KEY}"
attach fashion-attr-mlflow "${MLFLOW_ACCESS_KEY}"
echo "MinIO setup done: bucket ${BUCKET}, users for the pipeline and for MLflow"
