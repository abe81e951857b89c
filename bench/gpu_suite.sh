#!/usr/bin/env bash
# Everything that needs a GPU, in one command (about 10 minutes on one H100):
#
#   bash bench/gpu_suite.sh                 the suite; results in bench/results/<gpu>.json and <gpu>.md
#   bash bench/gpu_suite.sh --quick OUTDIR  the same steps in their smoke configurations, on any machine (CPU
#                                           included): checks the plumbing in under a minute, writes to OUTDIR
#
# Steps (each one's log goes to <results>/<gpu>.logs/, and a failing step does not stop the others):
#   1. the test suite on CUDA, Triton kernels compiled rather than interpreted (pytest -m "not slow")
#   2. bench/bench_logprobs.py         the logits kernel: naive eager, torch.compile, Liger CE, ours (N = 8192 tokens,
#                                      V in {32000, 50257, 128256}, bf16): time, GB/s, share of the HBM roofline
#   3. bench/bench_linear_logprobs.py  log-probs without logits at N = 8192, d = 4096, V = 128256 (bf16): ours,
#                                      Liger's fused linear cross-entropy, Cut Cross-Entropy (exact), 4 cuBLAS GEMMs
#   4. bench/bench_dpo_step.py         a DPO step at GPT-2 124M shapes, 8 pairs x 512 tokens, bf16: naive path,
#                                      logits kernel, fused linear: tokens/s and peak memory
#   5. bench/bench_lora_memory.py      peak memory of a DPO step: full fine-tuning vs LoRA
#   6. bench/collect_results.py        one JSON and one markdown table, with the versions and the device
#
# The GPU machine may have no package index: wheels placed in ./wheels (pip download --no-deps liger-kernel
# cut-cross-entropy pytest hypothesis tiktoken vaderSentiment ... -d wheels/) are installed from there first.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
if [[ "${1:-}" == "--quick" ]]; then
    QUICK=1
    RESULTS="${2:?usage: bash bench/gpu_suite.sh --quick OUTDIR}"
else
    RESULTS=bench/results
fi
if [[ -d wheels ]] && compgen -G "wheels/*.whl" > /dev/null; then
    python -m pip install -q --no-index --no-deps wheels/*.whl || echo "warning: installing ./wheels failed"
fi
NAME=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_') if torch.cuda.is_available() else 'cpu')")
if [[ $QUICK == 0 && $NAME == cpu ]]; then
    echo "error: no CUDA device here; bash bench/gpu_suite.sh --quick OUTDIR checks the steps on a CPU" >&2
    exit 1
fi
LOGS="$RESULTS/$NAME.logs"
mkdir -p "$LOGS"
STATUS="$LOGS/status.txt"
: > "$STATUS"
if [[ $NAME == cpu ]]; then export TRITON_INTERPRET=1; else export TRITON_INTERPRET=0; fi

step() {  # step NAME TIMEOUT_S COMMAND...: run it, keep its output, record its exit status
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $((SECONDS - start))" >> "$STATUS"
    tail -n 15 "$LOGS/$name.log"
}

if [[ $QUICK == 1 ]]; then
    step tests 300 python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_linear_logprobs.py \
        --junitxml "$LOGS/tests.xml"
    step logprobs 300 python bench/bench_logprobs.py --tiny --out "$LOGS/logprobs.json"
    step linear_logprobs 300 python bench/bench_linear_logprobs.py --quick --json "$LOGS/linear_logprobs.json"
    step dpo_step 300 python bench/bench_dpo_step.py --quick --json "$LOGS/dpo_step.json"
    step lora_memory 300 python bench/bench_lora_memory.py --quick --json "$LOGS/lora_memory.json"
else
    step tests 330 python -m pytest -q -p no:cacheprovider -m "not slow" --junitxml "$LOGS/tests.xml"
    step logprobs 150 python bench/bench_logprobs.py --vocab 32000 50257 128256 --tokens 8192 \
        --out "$LOGS/logprobs.json"
    step linear_logprobs 150 python bench/bench_linear_logprobs.py --part cuda-time --json "$LOGS/linear_logprobs.json"
    step dpo_step 120 python bench/bench_dpo_step.py --json "$LOGS/dpo_step.json"
    step lora_memory 90 python bench/bench_lora_memory.py --pairs 8 --tokens 512 --json "$LOGS/lora_memory.json"
fi
python bench/collect_results.py "$LOGS" "$RESULTS/$NAME"
