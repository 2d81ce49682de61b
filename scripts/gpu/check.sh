#!/usr/bin/env bash
# One run on the GPU check machine (H100, driver 580 / CUDA 13.0, PyTorch cu130 + transformers +
# peft in its Python, no Rust, no network): CPU-vs-CUDA parity of sightline on the repository's
# fixtures, TruthfulQA MC1+MC2 against lm-eval + transformers, a bf16 training step (full
# and LoRA) against PyTorch + peft, on a random LLaMA of TinyLlama-1.1B's shape, and the NCCL
# data-parallel path with one rank (the machine has one GPU) against the same run without it. The report goes
# to OUT_DIR/report.md (and report.json, per-stage logs under OUT_DIR/logs, all logs in
# OUT_DIR/logs.tar.gz).
#
#   scripts/gpu/check.sh OUT_DIR                 # on the GPU machine, from the repository root
#   DEVICE=cpu scripts/gpu/check.sh OUT_DIR      # the same stages on this CPU, tiny model
#
# Every stage runs under `timeout` inside one overall budget (BUDGET seconds, default 470 so the
# whole run stays under 8 minutes), and a failed or timed-out stage never stops the later ones:
# the report says which stages ran, passed, failed or timed out. Run it again after a fix: it
# reuses OUT_DIR/work (the unpacked binary, the generated 1.1B model) and rewrites the report.
#
# Environment (all optional):
#   DEVICE            cuda (default) or cpu (plumbing mode: same stages, `--device cpu`, SHAPE tiny)
#   SIGHTLINE_TARBALL the CUDA build (default target/cuda-dist/sightline-cuda.tar.xz, what
#                     scripts/cuda/build.sh packs); unpacked into OUT_DIR/work/bin
#   SIGHTLINE_BIN     use this binary instead (DEVICE=cpu default, unless SIGHTLINE_TARBALL is
#                     set: the newer of target/release/sightline and target/debug/sightline)
#   PYTHON            the Python with torch/transformers/peft (default python3)
#   WHEELS            a folder of wheels installed (pip --no-index) into OUT_DIR/work/py when
#                     lm_eval does not import (default target/gpu-wheels); without lm_eval the
#                     eval stage becomes eval-transformers (the same requests, lm-eval's rules,
#                     plain transformers)
#   NO_LM_EVAL=1      take that fallback even where lm_eval imports (to exercise it)
#   WORK              where the unpacked binary, the generated models and the runs go (default
#                     OUT_DIR/work; several GB for the 1.1B shape: keep it out of a folder whose
#                     files all come back)
#   SHAPE QUESTIONS STEPS THREADS BUDGET   model shape, TruthfulQA questions, timed train steps,
#                     CPU threads, overall seconds
set -uo pipefail

out=${1:?usage: scripts/gpu/check.sh OUT_DIR}
mkdir -p "$out/logs" "${WORK:-$out/work}"
out=$(cd "$out" && pwd)
work=$(cd "${WORK:-$out/work}" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-target/gpu-wheels}
THREADS=${THREADS:-$(nproc)}
BUDGET=${BUDGET:-470}
if [ "$DEVICE" = cpu ]; then
    SHAPE=${SHAPE:-tiny} QUESTIONS=${QUESTIONS:-4} STEPS=${STEPS:-2}
else
    SHAPE=${SHAPE:-tinyllama-1.1b} QUESTIONS=${QUESTIONS:-64} STEPS=${STEPS:-3}
fi
started=$(date +%s)
stages=$out/stages.tsv
printf 'stage\tstatus\trc\tseconds\tlimit\n' >"$stages"

# stage NAME LIMIT CMD...: runs CMD under `timeout` (LIMIT or what is left of BUDGET, the
# smaller), its output in logs/NAME.log, and records ok / failed / timeout / skipped.
stage() {
    local name=$1 limit=$2 left rc status t0
    shift 2
    left=$((BUDGET - ($(date +%s) - started)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        printf '%s\tskipped (budget spent)\t-\t0\t%s\n' "$name" "$limit" >>"$stages"
        return 0
    fi
    echo "== $name (limit ${limit}s)"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$stages"
    tail -n 3 "$out/logs/$name.log" | sed 's/^/   /'
    return 0
}

skip() { printf '%s\tskipped (%s)\t-\t0\t-\n' "$1" "$2" >>"$stages"; }

# --- setup: the binary, the CUDA libraries of the Python environment, lm_eval -------------
# What scripts/gpu/pack.sh split into target/gpu-carry/part-N (one part per `run` call, as the
# working tree and its carried paths may not pass 64 MiB a call): joined and unpacked here.
if ls target/gpu-carry/part-*/carry.tar.part-* >/dev/null 2>&1; then
    stage join 60 bash -c "mkdir -p '$work/carry' && cat \$(ls target/gpu-carry/part-*/carry.tar.part-* | sort -V) | tar -x -C '$work/carry'"
    [ -f "$work/carry/sightline-cuda.tar.xz" ] && SIGHTLINE_TARBALL=${SIGHTLINE_TARBALL:-$work/carry/sightline-cuda.tar.xz}
    [ -d "$work/carry/gpu-wheels" ] && WHEELS=$work/carry/gpu-wheels
fi
bin=${SIGHTLINE_BIN:-}
if [ -z "$bin" ] && [ "$DEVICE" = cpu ] && [ -z "${SIGHTLINE_TARBALL:-}" ]; then
    bin=$(ls -t target/release/sightline target/debug/sightline 2>/dev/null | head -n 1)
fi
if [ -z "$bin" ]; then
    tarball=${SIGHTLINE_TARBALL:-target/cuda-dist/sightline-cuda.tar.xz}
    stage unpack 60 bash -c "mkdir -p '$work/bin' && tar -xJf '$tarball' -C '$work/bin' && ls -l '$work/bin'"
    bin=$(find "$work/bin" -name sightline -type f | head -n 1)
    # The CUDA 13 libraries the binary links live in the PyTorch environment's nvidia/*/lib.
    libs=$("$PYTHON" -c 'import glob, os, nvidia; print(":".join(sorted({d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))})))' 2>/dev/null)
    export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
bin=$(cd "$(dirname "${bin:-.}")" && pwd)/$(basename "${bin:-missing}")
if ! "$PYTHON" -c 'import lm_eval' 2>/dev/null && [ -d "$WHEELS" ]; then
    stage wheels 60 bash -c "'$PYTHON' -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target '$work/py' '$WHEELS'/*.whl"
    export PYTHONPATH=$work/py${PYTHONPATH:+:$PYTHONPATH}
fi
stage binary 20 "$bin" --version
stage environment 60 bash -c '
    echo "device=$0 binary=$1"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
    "$2" scripts/gpu/report.py --environment' "$DEVICE" "$bin" "$PYTHON"

# --- the checks ------------------------------------------------------------------------------
export OMP_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -f "$out/parity.json" "$out/eval.json" "$out/eval-transformers.json" "$out/train.json"
stage parity 110 "$PYTHON" scripts/gpu/parity.py --bin "$bin" --device "$DEVICE" \
    --work "$work/parity" --json "$out/parity.json"
bench=(--threads "$THREADS" --work "$work/bench")
if [ -z "${NO_LM_EVAL:-}" ] && "$PYTHON" -c 'import lm_eval' >/dev/null 2>&1; then
    stage eval 170 "$PYTHON" bench/eval_vs_lm_eval.py "${bench[@]}" --device "$DEVICE" --dtype bf16 \
        --shape "$SHAPE" --questions "$QUESTIONS" --binary "$bin" --json "$out/eval.json"
fi
if [ ! -f "$out/eval.json" ]; then
    # No lm_eval, or it failed (e.g. against the machine's transformers 5): the same requests
    # against plain transformers with lm-eval's rules, so the GPU ratio is still measured.
    grep -q '^eval	' "$stages" || skip eval "lm_eval does not import or NO_LM_EVAL is set: see logs/environment.log"
    stage eval-transformers 170 "$PYTHON" bench/score_vs_transformers.py "${bench[@]}" --reference transformers \
        --device "$DEVICE" --dtype bf16 --shape "$SHAPE" --questions "$QUESTIONS" --binary "$bin" \
        --json "$out/eval-transformers.json"
fi
stage train 170 "$PYTHON" bench/train_step_vs_torch.py "${bench[@]}" --device "$DEVICE" --bf16 \
    --configs "$SHAPE" --modes full,lora --steps "$STEPS" --sightline-bin "$bin" --json "$out/train.json"
# One NCCL rank sums its gradients through the GPU (host -> device, ncclReduce + ncclBroadcast,
# device -> host): its losses and gradient norms must equal a plain run's bit for bit.
if [ "$DEVICE" = cuda ]; then
    stage nccl 90 bash -c '
        set -eo pipefail
        for b in auto nccl; do
            rm -rf "$1/nccl-$b"
            "$0" train --config configs/text-only.toml --device cuda --ddp-backend "$b" \
                output_dir="$1/nccl-$b" max_steps=3 max_grad_norm=1.0 2>&1 | tee "$1/nccl-$b.out"
        done
        grep -q "1 rank (nccl)" "$1/nccl-nccl.out"
        "$2" - "$1/nccl-auto/train_log.jsonl" "$1/nccl-nccl/train_log.jsonl" <<"PY"
import json, sys
runs = [[json.loads(l) for l in open(p) if l.strip()] for p in sys.argv[1:]]
keys = lambda r: [(s["step"], s.get("loss"), s.get("grad_norm")) for s in r]
print("plain:", keys(runs[0]))
print("nccl: ", keys(runs[1]))
assert runs[0] and keys(runs[0]) == keys(runs[1]), "one NCCL rank changed the losses"
print("same losses and gradient norms")
PY' "$bin" "$work" "$PYTHON"
else
    skip nccl "DEVICE=cpu: the CPU build has no NCCL"
fi

# --- the report --------------------------------------------------------------------------------
"$PYTHON" scripts/gpu/report.py "$out" && echo "report: $out/report.md"
tar -czf "$out/logs.tar.gz" -C "$out" logs stages.tsv
