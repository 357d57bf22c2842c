#!/usr/bin/env bash
# The GPU checks of issue 6 as one prepared command for a lent GPU machine.
#
# Here (with PyPI):  bash bench/device/prepare.sh          # stages .device/
# Device tool:       run(command="bash bench/device/gpu_checks.sh speed",
#                        carry=[".device"], timeout_s=600)
#
# Stages, each bounded by `timeout` so that one call ends inside the tool's
# 10-minute limit (override the seconds with the variables named):
#   speed  bench/throughput.py --preset paper --compile --profile --project
#          (TP_S, default 330 s), then the shared anchors in the same call:
#          gan_loader_anchor.py (GAN_ANCHOR_S, 100 s) and gpu_anchor.py
#          (ANCHOR_S, 150 s), so every ratio has its baseline on the same GPU.
#   mnist  bench/mnist_deact.py at MNIST_SCALE (default 1 = the paper's budget),
#          one process per (n, seed) cell, all in parallel on the one GPU
#          (MNIST_S, default 480 s), merged with --merge from the cells that
#          finished. Every cell runs LeNet, each reading of Deact and its
#          controls (MNIST_METHODS, default "controls": the noise images, the
#          unperturbed generator, the literal form) and reports validation
#          (images 4000-4999, where the default reading is chosen) and test
#          errors (5000-9999); MNIST_NS (default 25,100,1000) and MNIST_SEEDS
#          (default 3) size the grid to the call.
#   smoke  both stages at CPU-check sizes, on whatever device there is (what
#          tests/test_device_checks.py runs on a machine without a GPU).
# Outputs, all in $OUT (the tool brings back at most 8 files): machine.txt,
# <stage>.log, summary.md (the tables) and results.tar.gz (every CSV, markdown,
# PNG and profile).
set -uo pipefail
cd "$(dirname "$0")/../.."
STAGE=${1:-speed}
case $STAGE in speed | mnist | smoke) ;; *)
    echo "usage: $0 speed|mnist|smoke" >&2
    exit 2
    ;;
esac
OUT=${OUT:-/tmp/gpu_checks_out}
PY=${PYTHON:-python3}
RES=$(mktemp -d)
trap 'rm -rf "$RES"' EXIT
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# What the GPU image lacks travels as wheels (bench/device/prepare.sh); a Python
# that already has them (this project's .venv) uses its own.
if ! "$PY" -c 'import pydantic' 2>/dev/null && compgen -G ".device/whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/fa_site .device/whl/*.whl || exit 3
    export PYTHONPATH=/tmp/fa_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/components${PYTHONPATH:+:$PYTHONPATH}
ANCHORS=${ANCHORS:-.device/anchors}
MNIST_DIR=${MNIST_DIR:-.device/mnist}
[[ -d $MNIST_DIR ]] || MNIST_DIR=../shared/data/mnist

{
    echo "stage: $STAGE"
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(cat .device/COMMIT 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "cpus: $(nproc)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
    "$PY" -c 'import sys, torch, torchvision, pydantic
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision",
      torchvision.__version__, "pydantic", pydantic.__version__,
      "cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' 2>&1
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"
HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

LOG="$OUT/$STAGE.log"
: >"$LOG"
step() { # step NAME SECONDS CMD...: run with a time limit, log, never abort the stage
    local name=$1 secs=$2
    shift 2
    echo "=== $name (limit ${secs} s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout --kill-after=10 "$secs" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
    return 0
}

speed() {
    local tp=(--preset paper --compile --profile --project)
    if [[ $STAGE == smoke ]]; then tp=(--preset tiny --smoke --project --profile --device cpu --threads 1); fi
    # The GPU image has no MLflow: time batch inference only where the served model's
    # module (fashion_attr.registry.pyfunc) can be imported.
    "$PY" -c 'import mlflow' 2>/dev/null || tp+=(--only train,gan,loader,eval,ingest)
    step throughput "${TP_S:-330}" "$PY" bench/throughput.py "${tp[@]}" --out "$RES/throughput"
    if [[ ! -f $ANCHORS/gpu_anchor.py ]]; then
        echo "=== anchors: $ANCHORS/gpu_anchor.py not staged (run bench/device/prepare.sh); skipped" |
            tee -a "$LOG"
        return 0
    fi
    step gan_loader_anchor "${GAN_ANCHOR_S:-100}" "$PY" "$ANCHORS/gan_loader_anchor.py" "$RES/anchors"
    if [[ $HAS_CUDA == 1 ]]; then # the classifier anchor is CUDA-only
        step gpu_anchor "${ANCHOR_S:-150}" "$PY" "$ANCHORS/gpu_anchor.py" "$RES/anchors"
    fi
}

mnist() {
    local scale=${MNIST_SCALE:-1} extra=()
    if [[ $STAGE == smoke ]]; then
        scale=0.002
        extra=(--ns 25 --gan-top-channels 8 --syn-batch 8 --device cpu)
    fi
    local ns=${MNIST_NS:-25,100,1000} seeds=${MNIST_SEEDS:-3} pids=() n s
    local methods=${MNIST_METHODS:-controls}
    [[ $STAGE == smoke ]] && ns=25 && seeds=2
    echo "=== mnist: n in $ns, $seeds seeds, scale $scale, one process per cell" | tee -a "$LOG"
    for n in ${ns//,/ }; do
        for ((s = 0; s < seeds; s++)); do
            timeout --kill-after=10 "${MNIST_S:-480}" "$PY" bench/mnist_deact.py --threads 1 \
                --images "$MNIST_DIR/t10k-images-idx3-ubyte.gz" \
                --labels "$MNIST_DIR/t10k-labels-idx1-ubyte.gz" \
                --ns "$n" --seed "$s" --seeds 1 --scale "$scale" --methods "$methods" "${extra[@]}" \
                --out "$RES/mnist/cell_${n}_$s" >"$RES/mnist_${n}_$s.log" 2>&1 &
            pids+=($!)
        done
    done
    wait "${pids[@]}"
    local done_dirs
    done_dirs=$(find "$RES/mnist" -name runs.csv -printf '%h\n' 2>/dev/null | sort -V | paste -sd, -)
    echo "=== mnist: $(echo "$done_dirs" | tr ',' '\n' | grep -c .) cells finished" | tee -a "$LOG"
    tail -n 2 "$RES"/mnist_*.log >>"$LOG"
    if [[ -n $done_dirs ]]; then
        step mnist_merge 60 "$PY" bench/mnist_deact.py --merge "$done_dirs" --out "$RES/mnist/merged"
    fi
}

case $STAGE in
speed) speed ;;
mnist) mnist ;;
smoke)
    speed
    mnist
    ;;
esac

# The tables in one file, then everything else in one archive.
{
    echo "# GPU checks: $STAGE"
    echo
    sed 's/^/    /' "$OUT/machine.txt"
    for f in "$RES"/throughput/*.md "$RES"/mnist/merged/table3.md; do
        [[ -f $f ]] && { echo; cat "$f"; }
    done
    for f in "$RES"/anchors/*.json; do
        [[ -f $f ]] && { echo; echo "## $(basename "$f")"; echo '```'; cat "$f"; echo '```'; }
    done
} >"$OUT/summary.md"
tar -czf "$OUT/results.tar.gz" -C "$RES" .
echo "wrote $(ls "$OUT" | tr '\n' ' ')"
