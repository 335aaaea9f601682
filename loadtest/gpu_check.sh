#!/usr/bin/env bash
# One GPU check of the dynamics serving path, run from anywhere in the repository:
#
#   bash loadtest/gpu_check.sh
#
# On a machine with one CUDA GPU (sized for an H200: under 8 minutes in all) it prints
#   [1] kernel correctness: the Triton paged decode kernel and the prefill kernels vs torch SDPA,
#       bf16, on the default model's shapes and the large config's (max abs error, pass/fail);
#   [2] kernel TFLOP/s vs FlexAttention and SDPA (loadtest/kernels/bench_attention.py --quick);
#   [3] engine batches/s, frames/s and p50 batch latency for 1/8/32/128 sessions, default model and
#       a ~460M-parameter random config, each beside its FLOP-count bound; batch-invariant cost;
#   [4] the attention backend / kernel the served step used and a count of Triton decode launches;
#   [5] the causal video DiT at Wan2.1-T2V-1.3B size (random bf16, 480x832, chunks of 3 latent
#       frames, Wan2.1's VAE) for 1/4/16 sessions: frames/s per session and per GPU, chunk p50/p99,
#       memory per session, attention and VAE shares, each beside the FLOP-count bound; the goals
#       MET / NOT MET (loadtest/dit_bench.py).
# Without CUDA it says the GPU parts are skipped and runs CPU smoke versions in a few seconds.
# Each part runs under its own timeout (T_ENV, T_KERNELS, T_BENCH, T_ENGINE, T_LARGE, T_DIT seconds;
# 450 s together, so that the whole check stays under 8 minutes).
# Logs and JSON results go to $GPU_CHECK_OUT (else $OUT, else a new temporary folder).
# Exit status: 0 when every part that could run passed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="services:.${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
OUT_DIR="${GPU_CHECK_OUT:-${OUT:-}}"
[ -n "$OUT_DIR" ] || OUT_DIR="$(mktemp -d -t gpu_check.XXXXXX)"
mkdir -p "$OUT_DIR"

T_ENV="${T_ENV:-20}"
T_KERNELS="${T_KERNELS:-70}"
T_BENCH="${T_BENCH:-70}"
T_ENGINE="${T_ENGINE:-60}"
T_LARGE="${T_LARGE:-70}"
T_DIT="${T_DIT:-160}"

HAVE_TIMEOUT=1
command -v timeout >/dev/null 2>&1 || HAVE_TIMEOUT=0
# tmo LIMIT_S CMD...: CMD under a timeout where coreutils has one
tmo() {
    local limit="$1"
    shift
    if [ "$HAVE_TIMEOUT" = 1 ]; then timeout --kill-after=10 "$limit" "$@"; else "$@"; fi
}
declare -a SUMMARY=()
FAILED=0
START=$SECONDS

# run_part NAME LIMIT_S CMD...: run CMD under a timeout, output to the terminal and NAME.log
run_part() {
    local name="$1" limit="$2"
    shift 2
    local log="$OUT_DIR/$name.log" rc=0 t0=$SECONDS
    echo
    echo "=================== $name (timeout ${limit}s) ==================="
    tmo "$limit" "$@" >"$log" 2>&1 &
    local pid=$!
    # stream the log while the part runs (a plain pipe through tee would hide the timeout's status)
    tail -n +1 -s 0.2 -f "$log" --pid="$pid" 2>/dev/null || true
    wait "$pid" || rc=$?
    local status="PASS"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status="TIMEOUT"
        echo "!! $name: timed out after ${limit}s"
    elif [ "$rc" != 0 ]; then
        status="FAIL(rc=$rc)"
    elif grep -q "SKIPPED" "$log"; then
        status="PASS/SKIPPED(see log)"
    fi
    [ "${status%%(*}" = "PASS" ] || [ "${status%%/*}" = "PASS" ] || FAILED=1
    SUMMARY+=("$(printf '%-16s %-24s %4ss' "$name" "$status" "$((SECONDS - t0))")")
}

echo "=================== environment ==================="
echo "date: $(date -u +%FT%TZ)  host: $(hostname)  out: $OUT_DIR"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>/dev/null || true
fi
ENV_RC=0
tmo "$T_ENV" "$PY" - <<'EOF' || ENV_RC=$?
import importlib.util, platform, sys
print(f"python {sys.version.split()[0]} ({platform.platform()})")
try:
    import torch
except ImportError:
    print("torch: NOT INSTALLED"); sys.exit(3)
print(f"torch {torch.__version__}  cuda runtime {torch.version.cuda}  cuda available: {torch.cuda.is_available()}")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as e:
    print(f"triton: not importable ({e})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {torch.cuda.get_device_name(0)}  sm_{p.major}{p.minor}  {p.total_memory / 2**30:.1f} GiB  "
          f"{p.multi_processor_count} SMs  ({torch.cuda.device_count()} visible)")
from loadtest.engine_bench_common import missing_packages
miss = missing_packages()
print(f"optional packages missing: {', '.join(miss) if miss else 'none'}"
      + ("  (parts that need them are SKIPPED)" if miss else ""))
sys.exit(0 if torch.cuda.is_available() else 10)
EOF
if [ "$ENV_RC" != 0 ] && [ "$ENV_RC" != 10 ]; then
    echo "environment check failed (rc=$ENV_RC): nothing else can run"
    exit 1
fi

if [ "$ENV_RC" = 10 ]; then
    echo
    echo "No CUDA device: GPU parts [1]-[5] are SKIPPED. Running the CPU smoke parts instead."
    run_part cpu_kernels 60 "$PY" -m loadtest.engine_bench --device cpu --kernel-check
    run_part cpu_engine 60 "$PY" -m loadtest.engine_bench --device cpu --quick --sessions 1 2 \
        --time-budget-s 1 --json "$OUT_DIR/cpu_engine.json"
    run_part cpu_dit 60 "$PY" -m loadtest.dit_bench --device cpu --quick --json "$OUT_DIR/cpu_dit.json"
else
    run_part 1_kernels "$T_KERNELS" "$PY" -m loadtest.engine_bench --device cuda --kernel-check \
        --json "$OUT_DIR/kernels.json"
    run_part 2_bench_attention "$T_BENCH" "$PY" -m loadtest.kernels.bench_attention --quick --rep-ms 50 --require-gpu
    run_part 3_engine_default "$T_ENGINE" "$PY" -m loadtest.engine_bench --device cuda \
        --sessions 1 8 32 128 --time-budget-s 25 --json "$OUT_DIR/engine_default.json"
    run_part 3_engine_large "$T_LARGE" "$PY" -m loadtest.engine_bench --device cuda --large \
        --sessions 1 8 32 128 --time-budget-s 25 --json "$OUT_DIR/engine_large.json"
    # the deadline leaves the part's timeout ~40 s for start-up (imports, building 1.4e9 parameters)
    run_part 5_dit "$T_DIT" "$PY" -m loadtest.dit_bench --device cuda --sessions 1 4 16 \
        --time-budget-s 10 --deadline-s $((T_DIT - 40)) --json "$OUT_DIR/dit.json"
fi

echo
echo "=================== summary ($((SECONDS - START)) s; logs in $OUT_DIR) ==================="
for line in "${SUMMARY[@]}"; do echo "$line"; done
for f in "$OUT_DIR"/*.log; do
    [ -e "$f" ] || continue
    grep -hE "^\s+[0-9]+ sessions|batch-invariant mode|Triton attention kernel ran|^served step|FLOPs per frame|FLOPs of a steady chunk|^peak:|: (PASS|FAIL)$|  (PASS|FAIL)$|kernel check:|engine bench:|dit bench:|^session state|^resume data|MET" "$f" \
        | sed "s|^|$(basename "$f" .log): |" || true
done
if [ "$FAILED" != 0 ]; then
    echo "GPU CHECK: FAILED"
    exit 1
fi
echo "GPU CHECK: OK"
exit 0
