#!/usr/bin/env bash
# End-to-end demo on the bundled model: write five facts into the weights, recall them from a
# fresh process (so they must have been persisted), run a full sleep (Prefect flow: audit,
# null-space refresh, SWS/REM consolidation into the chat pathway, gates, report), recall again
# (the chat column now answers from the LoRA too), then show the home's status.
# Extra arguments (e.g. --config llama-3.2-3b, --set key=value) go to every command.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/bootstrap.sh"
cd "$repo"

export SLEEPWAKE_HOME="${SLEEPWAKE_HOME:-$repo/.home/demo}"
export TOKENIZERS_PARALLELISM=false
export PREFECT_SERVER_ANALYTICS_ENABLED=false

echo "== inject: writing scripts/demo_facts.jsonl into the model (home: $SLEEPWAKE_HOME)" >&2
.venv/bin/sleepwake inject --facts scripts/demo_facts.jsonl "$@"

echo "== recall: asking a fresh process for every fact" >&2
.venv/bin/sleepwake recall "$@"

echo "== sleep: the full-sleep Prefect flow (a few minutes on 2 cores: most of it is LoRA training)" >&2
.venv/bin/sleepwake sleep "$@"

echo "== recall after sleep: raw and chat answers, empty context" >&2
.venv/bin/sleepwake recall "$@"

echo "== status" >&2
.venv/bin/sleepwake status "$@"
