#!/usr/bin/env bash
# `make test-containers`: build the project image here and run the containerized checks
# (tests/test_containers.py: a step with --network none, the whole DAG with kfp.local's
# DockerRunner, serving the champion from the image). Starts a Docker engine if none answers
# (scripts/container-engine.sh; root, no bridge network) and stops the one it started at the
# end. An engine that cannot start is a failure with its log named, never a silent skip.
#   IMAGE       the tag to build and test (default fashion-attr:<fashion_attr.__version__>)
#   BASE_IMAGE  the base to build on (default: the local test base the script builds, since no
#               registry is reachable here; set it to your registry's python:3.11-slim-trixie)
set -euo pipefail
cd "$(dirname "$0")/.."
engine="bash scripts/container-engine.sh"
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' components/fashion_attr/__init__.py)
image=${IMAGE:-fashion-attr:$version}
started=0

# No BuildKit client yet (a clean machine has only a bare docker 28 client, or none) or no
# engine answering: `start` installs Debian's docker.io where needed and starts dockerd.
if ! client=$($engine docker 2>/dev/null) || ! "$client" info >/dev/null 2>&1; then
  if ! $engine start; then
    echo "test-containers: error: no Docker engine answers and none could be started (see" \
      "the log above and /var/lib/fashion-attr-engine/dockerd.log). The containerized" \
      "checks did not run." >&2
    exit 1
  fi
  started=1 # `stop` stops only a dockerd that `start` started itself
  client=$($engine docker)
fi
stop_engine() { if [[ $started == 1 ]]; then $engine stop; fi; }
trap stop_engine EXIT

base=${BASE_IMAGE:-}
if [[ -z $base ]]; then
  $engine base
  base=local/python:3.11-bookworm
fi
echo "test-containers: building $image on $base"
t0=$(date +%s)
make --no-print-directory image IMAGE="$image" BASE_IMAGE="$base"
echo "test-containers: image built in $(( $(date +%s) - t0 )) s;" \
  "size $("$client" image inspect -f '{{.Size}}' "$image") bytes"
FA_TEST_IMAGE="$image" .venv/bin/python -m pytest -m containers -q -p no:cacheprovider \
  tests/test_containers.py "$@"
