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

# The dependency tree's licenses, sources and duplicate versions (deny.toml), with cargo-deny
# built once into the target dir; its advisories check needs the RustSec database from GitHub
# and is skipped, loudly, where that cannot be reached.
deny_version=0.20.2
deny="$target_dir/tools/bin/cargo-deny"
if ! "$deny" --version 2>/dev/null | grep -q " $deny_version"; then
    cargo install --quiet --locked --root "$target_dir/tools" "cargo-deny@$deny_version"
fi
"$deny" --log-level error check licenses bans sources
if timeout 20 "$deny" --log-level error fetch db >/dev/null 2>&1; then
    "$deny" --log-level error check --disable-fetch advisories
else
    echo "SKIPPED: cargo deny check advisories (the RustSec advisory database could not be fetched)" >&2
fi

cargo test --workspace --locked "$@"
