#!/usr/bin/env bash
# The test command (README.md; .ci/run calls it). Installs the Python peers the integration tests
# start on 127.0.0.1 (moto's AWS emulator, ...) into a virtualenv next to the build, then runs the
# whole workspace's tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
venv="$target_dir/test-python"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# A stamp keeps re-runs quick: pip runs again only when the requirements change.
stamp="$venv/.requirements"
if ! cmp -s scripts/test-requirements.txt "$stamp"; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/test-requirements.txt
    cp scripts/test-requirements.txt "$stamp"
fi
export ORDERFLOW_TEST_PYTHON="$(cd "$venv" && pwd)/bin/python"

cargo test --workspace --locked "$@"
