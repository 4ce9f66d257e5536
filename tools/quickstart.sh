#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing, builds the switchyard driver and
# runs it on the quick-start config: the plan, then 100 training steps (about 1.5 s on one core).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cmake --preset default >/dev/null
cmake --build --preset default --target switchyard_cli
./build/default/bin/switchyard plan examples/configs/quickstart.json
./build/default/bin/switchyard train examples/configs/quickstart.json --steps 100 --metrics build/quickstart.jsonl
