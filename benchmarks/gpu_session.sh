#!/usr/bin/env bash
# One call on a lent GPU machine: the environment, the gpu test tier, then the benchmarks, each step
# tee'd to $OUT/<step>.log and bounded by `timeout` so that one hang cannot eat the lease; the whole
# script ends within GPU_SESSION_BUDGET_S (default 520 s, under the device tool's 600 s per call).
# A short summary is printed last (the device tool returns only the end of the output).
#
#   bash benchmarks/gpu_session.sh                                   # on the GPU machine ($OUT is set there)
#   GPU_SESSION_SMOKE=1 OUT=/tmp/s bash benchmarks/gpu_session.sh    # anywhere: every step in its CPU smoke form
#
# Steps, in order of value (a late step gets what time is left, less what later steps reserve):
#   env          nvidia-smi (read-only queries), versions, commit (ATTNGEN_COMMIT if there is no .git)
#   gpu_tests    python -m pytest -q -m gpu tests/gpu   (-n 8, --timeout=150 where xdist, pytest-timeout are)
#   decode_bench benchmarks/decode_bench.py             (copy ceiling, GQA/MQA decode vs SDPA, flash-attn)
#   bench_fwd    benchmarks/bench.py --device cuda      (forward, d 128, n 4K-64K, five masks)
#   bench_bwd    benchmarks/bench.py --backward         (forward + backward, two masks, n 4K and 16K)
#   linear       benchmarks/linear_scaling.py --softmax (linear vs softmax crossover up to 64K)
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export ATTNGEN_CACHE_DIR="${ATTNGEN_CACHE_DIR:-/tmp/attngen-gpu-session-cache}"   # compiled kernels stay out of $OUT
OUT="${OUT:-/tmp/attngen-gpu-session}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
SMOKE="${GPU_SESSION_SMOKE:-0}"
BUDGET="${GPU_SESSION_BUDGET_S:-520}"
START=$(date +%s)
SUMMARY=()
FAILED=0

# run_step NAME CAP RESERVE COMMAND...: at most CAP seconds, and never into the RESERVE seconds that
# the later steps need; stdout and stderr tee'd to $OUT/NAME.log.
run_step() {
    local name=$1 cap=$2 reserve=$3
    shift 3
    local left=$(( BUDGET - ($(date +%s) - START) - reserve ))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 15 )); then
        echo "== $name: skipped, ${left}s left"
        SUMMARY+=("$name|skipped|0|$limit")
        FAILED=1
        return
    fi
    echo "== $name (timeout ${limit}s): $*"
    local t0 rc status
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT"; FAILED=1 ;;
        *) status="FAILED rc=$rc"; FAILED=1 ;;
    esac
    SUMMARY+=("$name|$status|$(( $(date +%s) - t0 ))|$limit")
}

environment() {
    date -u
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo "no .git here") (ATTNGEN_COMMIT=${ATTNGEN_COMMIT:-unset})"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi
        nvidia-smi --format=csv \
        --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw
    else
        echo "nvidia-smi: not here"
    fi
    "$PY" - <<'EOF'
import importlib.util, platform, torch, triton
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__} (cuda {torch.version.cuda}), triton {triton.__version__}")
if cuda:
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB, L2 {p.L2_cache_size / 2**20:.0f} MiB")
for name in ("flash_attn", "xdist", "pytest_timeout", "hypothesis", "jinja2", "sympy", "networkx", "yaml",
             "numpy"):
    print(f"{name}: {'yes' if importlib.util.find_spec(name) else 'MISSING'}")
EOF
    echo "cpus: $(nproc)"
}

PLUGINS=()
if [[ $SMOKE != 1 ]] && "$PY" -c "import xdist" >/dev/null 2>&1; then
    PLUGINS+=(-n 8)               # compiles are CPU-bound: 8 workers share the one GPU
fi
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
    PLUGINS+=(--timeout=150)      # one hung case fails alone instead of taking the step's timeout
fi
FWD=(--cases causal sliding_window_4096 documents longformer bigbird)
BWD=(--backward --cases causal sliding_window_4096)

export -f environment
export PY
run_step env 60 470 bash -c environment
run_step gpu_tests 240 260 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --durations=15 \
    --junitxml="$OUT/gpu_tests.xml" "${PLUGINS[@]}"
if [[ $SMOKE == 1 ]]; then
    run_step decode_bench 120 160 "$PY" benchmarks/decode_bench.py --smoke --json "$OUT/decode_bench.json"
    run_step bench_fwd 150 70 "$PY" benchmarks/bench.py --smoke "${FWD[@]}"
    run_step bench_bwd 60 30 "$PY" benchmarks/bench.py --smoke "${BWD[@]}"
    run_step linear 40 0 "$PY" benchmarks/linear_scaling.py --device cpu --softmax --lengths 64 128 --repeat 1
else
    run_step decode_bench 120 160 "$PY" benchmarks/decode_bench.py --json "$OUT/decode_bench.json"
    run_step bench_fwd 150 70 "$PY" benchmarks/bench.py --device cuda --dims 128 --n 4096 16384 65536 "${FWD[@]}"
    run_step bench_bwd 60 30 "$PY" benchmarks/bench.py --device cuda --dims 128 --n 4096 16384 "${BWD[@]}"
    run_step linear 40 0 "$PY" benchmarks/linear_scaling.py --device cuda --softmax --head-dim 64 --heads 8 \
        --lengths 1024 4096 16384 65536 --repeat 3
fi

# -- the summary, last ---------------------------------------------------------------------------
echo
echo "==================== summary ($(( $(date +%s) - START ))s of ${BUDGET}s; logs in $OUT) ===================="
echo "| step | status | seconds | timeout |"
echo "|---|---|---|---|"
for row in "${SUMMARY[@]}"; do echo "| ${row//|/ | } |"; done
echo
echo "-- gpu tests (gpu_tests.log):"
grep -E "^(FAILED|ERROR)" "$OUT/gpu_tests.log" 2>/dev/null | head -n 25
tail -n 1 "$OUT/gpu_tests.log" 2>/dev/null
echo
echo "-- decode bandwidth (decode_bench.log):"
sed -n '/^copy ceiling/p;/^summary/,$p' "$OUT/decode_bench.log" 2>/dev/null | head -n 30
echo
echo "-- attention forward (bench_fwd.log; TFLOP/s from allowed pairs):"
grep -E "^(device|\| )" "$OUT/bench_fwd.log" 2>/dev/null | head -n 50
echo
echo "-- forward + backward (bench_bwd.log):"
grep -E "^\| " "$OUT/bench_bwd.log" 2>/dev/null | head -n 20
echo
echo "-- linear vs softmax (linear.log):"
tail -n 12 "$OUT/linear.log" 2>/dev/null
echo
ls -l "$OUT"
exit $FAILED
