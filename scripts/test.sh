#!/usr/bin/env bash
# The test command (README.md; .ci/run calls it). Installs the Python peers the integration tests
# start on 127.0.0.1 (moto's AWS emulator, ...) into a virtualenv next to the build, stunnel
# (the TLS listener of tests/it/managed_kafka.rs) and kcat (tests/it/clients.rs) when they are
# missing and this runs as root, Chromium with chromedriver (tests/it/browser.rs) when missing (as
# root, or through sudo), and kafkajs from npm next to the build when Node.js is there, then runs
# the whole workspace's tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing() {
    echo "scripts/test.sh: $1" >&2
    exit 1
}

# What the build and the Python peers need (README.md, "Requirements").
for tool in cargo cc make perl pkg-config python3; do
    command -v "$tool" >/dev/null || missing "$tool is not installed (see README.md, Requirements)"
done
pkg-config --exists openssl ||
    missing "OpenSSL's headers are not installed: apt-get install libssl-dev (or build with --features vendored-openssl)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    missing "the test peers need Python >= 3.11; python3 is $(python3 --version 2>&1)"

# Debian's stunnel4 for the TLS test; without it that test says SKIPPED and passes.
if ! command -v stunnel4 >/dev/null && ! command -v stunnel >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -qq stunnel4 >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq stunnel4 >/dev/null 2>&1; } ||
            echo "scripts/test.sh: could not install stunnel4: the TLS test will be SKIPPED" >&2
    else
        echo "scripts/test.sh: no stunnel4 (apt-get install stunnel4): the TLS test will be SKIPPED" >&2
    fi
fi

# Debian's kcat (librdkafka 2.0.2, older than the one we build with) for the clients test; without
# it that test says SKIPPED and passes.
if ! command -v kcat >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -qq kcat >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq kcat >/dev/null 2>&1; } ||
            echo "scripts/test.sh: could not install kcat: its clients test will be SKIPPED" >&2
    else
        echo "scripts/test.sh: no kcat (apt-get install kcat): its clients test will be SKIPPED" >&2
    fi
fi

# Debian's Chromium and its WebDriver for the console's browser test (tests/it/browser.rs); without
# them that test says SKIPPED and passes.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt=""
    if [ "$(id -u)" = 0 ]; then
        apt="apt-get"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        apt="sudo apt-get"
    fi
    if [ -n "$apt" ] && command -v apt-get >/dev/null; then
        $apt install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
            { $apt update -qq >/dev/null 2>&1 && $apt install -y -qq chromium chromium-driver >/dev/null 2>&1; } ||
            echo "scripts/test.sh: could not install chromium and chromium-driver: the browser test will be SKIPPED" >&2
    else
        echo "scripts/test.sh: no chromium/chromedriver (apt-get install chromium chromium-driver): the browser test will be SKIPPED" >&2
    fi
fi

target_dir="${CARGO_TARGET_DIR:-target}"
venv="$target_dir/test-python"
# A venv that a failed run left half-made (no pip) is made again.
if [ -d "$venv" ] && ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "scripts/test.sh: $venv is incomplete; making it again" >&2
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" ||
        { rm -rf "$venv"; missing "python3 -m venv failed: apt-get install python3-venv"; }
fi
# A stamp keeps re-runs quick: pip runs again only when the requirements change.
stamp="$venv/.requirements"
if ! cmp -s scripts/test-requirements.txt "$stamp"; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/test-requirements.txt ||
        missing "pip could not install scripts/test-requirements.txt into $venv"
    cp scripts/test-requirements.txt "$stamp"
fi
export ORDERFLOW_TEST_PYTHON="$(cd "$venv" && pwd)/bin/python"

# kafkajs for the clients test, from npm into a directory next to the build (again only when
# scripts/test-package.json changes); without Node.js and npm that test says SKIPPED and passes.
node_dir="$target_dir/test-node"
if command -v node >/dev/null && command -v npm >/dev/null; then
    if ! cmp -s scripts/test-package.json "$node_dir/package.json" || [ ! -d "$node_dir/node_modules" ]; then
        rm -rf "$node_dir"
        mkdir -p "$node_dir"
        cp scripts/test-package.json "$node_dir/package.json"
        (cd "$node_dir" && npm install --silent --no-audit --no-fund >/dev/null) ||
            missing "npm could not install scripts/test-package.json into $node_dir"
    fi
    export ORDERFLOW_TEST_NODE_MODULES="$(cd "$node_dir" && pwd)/node_modules"
else
    echo "scripts/test.sh: no node and npm: the kafkajs clients test will be SKIPPED" >&2
fi

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

# OTLP export is a feature of its own (`--features otlp`), off in the build above: its test,
# an order's spans exported as one trace from the request through every stage, builds with it.
cargo test --locked --features otlp --test it "$@" otlp::
