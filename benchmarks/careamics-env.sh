#!/usr/bin/env bash
# Create (idempotently) the separate virtualenv that holds CAREamics 0.3.5 for the benchmarks.
#
#   benchmarks/careamics-env.sh [VENV_DIR]          default: benchmarks/.venv-careamics
#   PYTHON=python3.11 benchmarks/careamics-env.sh   choose the interpreter
#   FORCE=1 benchmarks/careamics-env.sh             recreate from scratch
#
# CAREamics 0.3.5 pins torchvision<=0.26, which pins torch==2.11: it cannot share the project
# virtualenv (.venv, torch 2.13). This script never touches .venv. Expect a large download
# (torch 2.11 from PyPI is the CUDA build, several GB in the venv).
#
# Some machines cap pip with a site-wide constraints file (e.g. /etc/xdg/pip/pip.conf with
# `torch<=2.14.1`). The cap admits torch 2.11, so it is kept by default; set
# CAREAMICS_ENV_IGNORE_PIP_CONFIG=1 to install with PIP_CONFIG_FILE=/dev/null and an empty
# PIP_CONSTRAINT for this venv only (the environment of the caller is not changed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-${CAREAMICS_VENV:-$HERE/.venv-careamics}}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
CAREAMICS_VERSION="${CAREAMICS_VERSION:-0.3.5}"
STAMP="$VENV/.careamics-installed"
WANT="careamics==$CAREAMICS_VERSION"

if [[ "${FORCE:-0}" == "1" ]]; then
    rm -rf "$VENV"
fi
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
        && "$VENV/bin/python" -c "import careamics" >/dev/null 2>&1; then
    echo "careamics venv ready: $VENV ($WANT)"
    exit 0
fi

start=$(date +%s)
echo "== creating $VENV with $PYTHON ($WANT)"
"$PYTHON" -m venv "$VENV"

pip_env=()
if [[ "${CAREAMICS_ENV_IGNORE_PIP_CONFIG:-0}" == "1" ]]; then
    pip_env=(env PIP_CONFIG_FILE=/dev/null PIP_CONSTRAINT=)
fi
pip() { "${pip_env[@]}" "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

pip install -q --upgrade pip
# psutil: the driver reports peak RSS of its own process.
if ! pip install -q "$WANT" psutil; then
    echo "!! pip could not install $WANT. If a site-wide pip constraint blocks torch 2.11, rerun" >&2
    echo "!! with CAREAMICS_ENV_IGNORE_PIP_CONFIG=1 (affects this venv's install only)." >&2
    exit 1
fi

"$VENV/bin/python" - <<'EOF'
import careamics, numpy, torch
print(f"careamics {careamics.__version__}  torch {torch.__version__}  numpy {numpy.__version__}")
EOF
echo "$WANT" > "$STAMP"
end=$(date +%s)
size=$(du -sh "$VENV" | cut -f1)
echo "careamics venv ready: $VENV ($WANT) in $((end - start)) s, $size"
