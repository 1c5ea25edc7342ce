#!/usr/bin/env bash
# The GPU checks in one run, on a host with a CUDA GPU: the CUDA tests (serving and training),
# `ml bench` on the GPU (the shipped model alone and side by side with the v1 two-model
# pipeline), and the pipeline bench with a GPU worker. Every step has its own time limit and
# log; one failing step does not stop the others. Results: $OUT (default var/gpu), summarised in docs/benchmarks.md.
#
#   bench/gpu_check.sh                       # python3 with this project's requirements
#   DEVICE=cpu N=64 bench/gpu_check.sh       # a dry run of the same steps on a CPU
#   STEPS="pipeline" PROCESSES="1 4 8" bench/gpu_check.sh   # the pipeline per pool size
#
# The pipeline bench needs redis-server on PATH; without PostgreSQL set
# BENCH_DATABASE_URL=sqlite:////tmp/bench.sqlite3 (the stack runs on SQLite then).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-var/gpu}
DEVICE=${DEVICE:-cuda}
N=${N:-500}
STEPS=${STEPS:-"cuda-tests ml-bench ml-bench-versus pipeline"}
PROCESSES=${PROCESSES:-auto}  # the GPU worker's pool processes (INFERENCE_PROCESSES), each run
FULL_SIZE=${FULL_SIZE:-}      # e.g. 1800x1500: send full-size radiographs instead of 224 px
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 DATABASE_URL=${DATABASE_URL:-sqlite:////tmp/pneumo-gpu-test.sqlite3}
mkdir -p "$OUT"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    case " $STEPS machine " in *" ${name%%-p*} "*) ;; *) return 0 ;; esac
    echo "== $name: $*"
    timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
    local rc=$?
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || failed=1
}

step machine 30 sh -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
    || true; nproc; $PY -c 'import torch; print(torch.__version__, torch.cuda.is_available())'"
step cuda-tests 180 "$PY" -m pytest -p no:cacheprovider -q -rs tests/worker/test_cuda.py \
    tests/ml/test_multitask.py -k cuda
step ml-bench 150 "$PY" -m ml bench --device "$DEVICE" --batch-sizes 1 8 32 128 --repeats 5 \
    --json "$OUT/ml-bench.json"
step ml-bench-versus 150 "$PY" -m ml bench --device "$DEVICE" --versus ml/weights/v1/binary.pt \
    ml/weights/v1/etiology.pt --batch-sizes 128 --repeats 5 --json "$OUT/ml-bench-versus.json"
for p in $PROCESSES; do
    [ "$p" = auto ] && p=0
    step "pipeline-p$p" 240 env INFERENCE_PROCESSES="$p" "$PY" -m bench.pipeline \
        --device "$DEVICE" -n "$N" --single 20 --rounds 2 ${FULL_SIZE:+--full-size "$FULL_SIZE"} \
        --json "$OUT/pipeline-p$p.json"
done
exit $failed
