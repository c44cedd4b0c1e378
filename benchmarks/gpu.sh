#!/usr/bin/env bash
# One prepared script for an NVIDIA GPU machine without network access.
#
#   benchmarks/gpu.sh OUT_DIR [--wheels DIR] [--config PATH] [--python PY] [--quick] [-- LAUNCH_ARGS...]
#   benchmarks/gpu.sh --download DIR        # on a machine WITH network: fetch the wheels to carry along
#
# What it does, writing everything under OUT_DIR:
#   1. records the machine: nvidia-smi, CPU, git revision                      -> machine.txt
#   2. makes a virtualenv OUT_DIR/venv and installs, from the wheels carried in --wheels (default:
#      ./wheels) and nothing else (pip --no-index), requirements.txt and jax[cuda12] matching the
#      pinned jax                                                              -> install.txt
#      (--python PY skips this and uses an existing interpreter that already has them)
#   3. checks that jax sees a GPU (refuses to go on otherwise, unless GPU_SH_ALLOW_CPU=1: a dry run
#      of this script's logic on a CPU machine)
#   4. runs benchmarks 1-3 at full size through benchmarks/run.py: loss_bench (implicit vs dense,
#      dense FLOP/s), capability_bench (beyond_lazy at l=4, d=10,000), sweep_bench (the sweep as one
#      program)                                                                -> bench/, summary.txt
#      and loss_bench again with JAX_DEFAULT_MATMUL_PRECISION=highest (true float32 matmuls; the GPU
#      default lets XLA use TF32 for float32 dots)                              -> bench_f32/
#   5. runs the main job `launch.py --config=configs/lazy_vs_rich.py` (or --config PATH) at full size
#      into OUT_DIR/lazy_vs_rich, with any LAUNCH_ARGS after `--`; if the config file does not exist
#      it says so and skips this step                                           -> lazy_vs_rich.log
#   6. prints the benchmark lines and the run times                             -> summary.txt
#
# --quick passes --quick to the benchmarks (for a dry run; the main job is then up to LAUNCH_ARGS).
# Exit status: non-zero if any step failed (the steps after a failed benchmark still run).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_VERSION="$(sed -n 's/^jax==//p' "$REPO/requirements.txt")"

if [[ "${1:-}" == "--download" ]]; then
  dest="${2:?usage: benchmarks/gpu.sh --download DIR}"
  mkdir -p "$dest"
  # Linux x86_64, CPython 3.11 (what the suite pins); run where pip can reach PyPI.
  exec python3 -m pip download -d "$dest" --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --python-version 3.11 \
    --implementation cp -r "$REPO/requirements.txt" "jax[cuda12]==$JAX_VERSION"
fi

OUT="${1:?usage: benchmarks/gpu.sh OUT_DIR [--wheels DIR] [--config PATH] [--python PY] [--quick] [-- LAUNCH_ARGS...]}"
shift
WHEELS="$REPO/wheels"
CONFIG="$REPO/configs/lazy_vs_rich.py"
PY=""
QUICK=""
LAUNCH_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    --) shift; LAUNCH_ARGS=("$@"); break ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
FAILED=0
step() { echo "== $(date '+%F %T') $*" | tee -a "$OUT/steps.txt"; }

# 1. machine
step "machine"
{
  echo "date: $(date -Is)"
  echo "host: $(hostname)"
  echo "git: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (+uncommitted changes)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2-) x $(nproc)"
  echo "memory: $(grep MemTotal /proc/meminfo 2>/dev/null)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    nvidia-smi -L
  else
    echo "nvidia-smi: not found"
  fi
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 2. environment
if [[ -z "$PY" ]]; then
  step "install from $WHEELS (no network)"
  if [[ ! -d "$WHEELS" ]]; then
    echo "error: no wheel directory $WHEELS (make it with: benchmarks/gpu.sh --download $WHEELS, on a machine with network)" >&2
    exit 2
  fi
  python3 -m venv "$OUT/venv" > "$OUT/install.txt" 2>&1 || { echo "error: python3 -m venv failed (see $OUT/install.txt)" >&2; exit 2; }
  PY="$OUT/venv/bin/python"
  if ! "$PY" -m pip install --no-index --find-links "$WHEELS" -r "$REPO/requirements.txt" \
      "jax[cuda12]==$JAX_VERSION" >> "$OUT/install.txt" 2>&1; then
    echo "error: pip install from $WHEELS failed (see $OUT/install.txt)" >&2
    exit 2
  fi
fi
"$PY" -m pip freeze > "$OUT/pip_freeze.txt" 2>/dev/null

# 3. a GPU, or an explicit dry run
step "device check"
BACKEND="$("$PY" -c 'import jax; print(jax.default_backend(), jax.device_count(), jax.devices()[0].device_kind)' 2>>"$OUT/steps.txt")"
echo "jax backend: $BACKEND" | tee -a "$OUT/machine.txt"
if [[ "$BACKEND" != gpu* ]]; then
  if [[ "${GPU_SH_ALLOW_CPU:-0}" == "1" ]]; then
    echo "warning: no GPU; dry run on '$BACKEND' (GPU_SH_ALLOW_CPU=1)" | tee -a "$OUT/machine.txt"
  else
    echo "error: jax does not see a GPU (backend: $BACKEND); set GPU_SH_ALLOW_CPU=1 for a CPU dry run" >&2
    exit 3
  fi
fi

cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# 4. benchmarks 1-3
step "benchmarks 1-3 ${QUICK:-(full)}"
"$PY" -m benchmarks.run $QUICK --only loss_bench,capability_bench,sweep_bench --out "$OUT/bench" \
  > "$OUT/bench_lines.txt" 2> "$OUT/bench_progress.txt" || FAILED=1
cat "$OUT/bench_lines.txt"
step "loss_bench with float32 matmuls (JAX_DEFAULT_MATMUL_PRECISION=highest)"
JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m benchmarks.run $QUICK --only loss_bench --out "$OUT/bench_f32" \
  > "$OUT/bench_f32_lines.txt" 2>> "$OUT/bench_progress.txt" || FAILED=1
sed 's/^/[f32 matmul] /' "$OUT/bench_f32_lines.txt"

# 5. the main job
if [[ -f "$CONFIG" ]]; then
  step "main job $CONFIG ${LAUNCH_ARGS[*]:-}"
  start=$(date +%s)
  "$PY" launch.py --config="$CONFIG" --workdir="$OUT/lazy_vs_rich" "${LAUNCH_ARGS[@]}" \
    > "$OUT/lazy_vs_rich.log" 2>&1
  rc=$?
  [[ $rc -eq 0 ]] || FAILED=1
  echo "main job: $(( $(date +%s) - start ))s, exit $rc, last lines:" | tee -a "$OUT/steps.txt"
  tail -n 5 "$OUT/lazy_vs_rich.log"
else
  step "main job skipped: $CONFIG does not exist (yet)"
fi

# 6. summary
{
  echo "# benchmarks/gpu.sh $(date -Is) on: $(head -n 20 "$OUT/machine.txt" | grep -E 'jax backend|^NVIDIA|name' | tr '\n' ' ')"
  cat "$OUT/bench_lines.txt"
  sed 's/^/[f32 matmul] /' "$OUT/bench_f32_lines.txt"
  grep -E '^== ' "$OUT/steps.txt"
} > "$OUT/summary.txt"
step "done (failed steps: $FAILED); results in $OUT"
exit $FAILED
