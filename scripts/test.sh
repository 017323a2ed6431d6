#!/usr/bin/env bash
# Run the test suite in .venv (bootstrapped first). Arguments go to pytest; default -q.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/bootstrap.sh"
cd "$repo"

# Tests never touch the network: models are built in-process or shipped in packages.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

if [ "$#" -eq 0 ]; then
  # The full run (CI): the type checker first, on every layer below the Prefect tasks.
  .venv/bin/mypy sleepwake/models sleepwake/storage sleepwake/memory sleepwake/sleep sleepwake/chat sleepwake/serve
  set -- -q --durations=15
fi

status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  # pytest's 5 means "no tests collected" (e.g. a -k that matches nothing): not a failure.
  echo "test.sh: pytest collected no tests" >&2
  exit 0
fi
exit "$status"
