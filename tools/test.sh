#!/usr/bin/env bash
# The test command: installs what is missing, then configures, builds and runs every test
# (CTest labels unit, consumer, compile_fail, mpi, cuda) with the default preset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cmake --workflow --preset default
