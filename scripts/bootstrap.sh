#!/usr/bin/env bash
# Create .venv and install marrowdx with everything it needs, in one pip
# resolution (numpy stays < 2 for nvidia-pytriton). Idempotent: skips the
# install when pyproject.toml has not changed since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
# dcmtk (storescu/storescp/dsrdump) is the independent DICOM peer of the PACS tests. Installed
# when missing and we are root (CI, containers); elsewhere those tests skip and say why.
if ! command -v storescu >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dcmtk; } >/dev/null \
    || echo "bootstrap: could not install dcmtk; the DICOM peer tests will skip" >&2
fi
# PostgreSQL server binaries: the shared store's tests and the distributed fault test start their own
# server on loopback (store/pglocal.py). Installed when missing and we are root; elsewhere they skip.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; } >/dev/null \
    || echo "bootstrap: could not install postgresql; the PostgreSQL store tests will skip" >&2
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.marrowdx-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import numpy, torch, tritonclient, onnxruntime; assert numpy.__version__ < '2'" \
  || { echo "bootstrap: environment check failed" >&2; exit 1; }
