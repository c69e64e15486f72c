#!/usr/bin/env bash
# What a visitor of a GPU Space does, through phi3lora's own commands (the ones the app's tasks run), on Phi-3-mini's
# architecture (random bf16 weights, the real tokenizer where one is found): the identity sample written with a name,
# a background QLoRA run and a LoRA run with the app's defaults, each evaluated (eval split and the everyday-chat
# forgetting check), one prompt compared, then DPO on the LoRA adapter from preference pairs. Timings on stdout.
#   bash bench/gpu_user_path.sh [WORK_FOLDER]        SIZE=demo for the demo widths (a CPU smoke of this script)
# Environment: PYTHON (default python3), TOKENIZER (a folder or hub id for bench/phi3_mini.py), STEPS (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
work=$(realpath -m "${1:-$(mktemp -d)}")
steps=${STEPS:-60}
mkdir -p "$work"
export PHI3LORA_HOME="$work/home" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
phi3lora() { "$python" -m phi3lora "$@"; }
timed() { local started=$SECONDS; "$@"; echo "[$(($SECONDS - started)) s] ${*:1:3}"; }

model="$work/phi3-mini"
timed "$python" bench/phi3_mini.py "$model" --size "${SIZE:-full}" ${TOKENIZER:+--tokenizer "$TOKENIZER"} >/dev/null
phi3lora samples identity --name Wrenfield --author "Larkspur Labs" --output "$work/identity.jsonl"
"$python" - "$work/identity.jsonl" "$work/pairs.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
with open(sys.argv[2], "w") as out:
    for row in rows[:48]:
        user, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        out.write(json.dumps({"prompt": [{"role": "user", "content": user}],
                              "chosen": [{"role": "assistant", "content": answer}],
                              "rejected": [{"role": "assistant", "content": "I am an AI assistant."}]}) + "\n")
EOF

run_id() { "$python" -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
declare -A runs
for method in qlora lora; do
    runs[$method]=$(phi3lora runs start --model "$model" --data "$work/identity.jsonl" --method "$method" \
                    --set max_steps="$steps" --json | run_id)
    timed phi3lora runs wait "${runs[$method]}" --timeout 600
    timed phi3lora evaluate "${runs[$method]}" --samples 4 --max-new-tokens 24
done
timed phi3lora compare --adapter "$PHI3LORA_HOME/runs/${runs[lora]}" --model "$model" --prompt "What is your name?" --max-new-tokens 24
dpo=$(phi3lora runs start --method dpo --from-adapter "${runs[lora]}" --data "$work/pairs.jsonl" \
      --set max_steps=$((steps / 2)) --json | run_id)
timed phi3lora runs wait "$dpo" --timeout 600
