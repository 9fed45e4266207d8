#!/usr/bin/env bash
# Create (idempotently) the virtualenv that holds CAREamics 0.3.5 next to this checkout:
# used by the CAREamics comparisons of the benchmarks and by `make test-careamics`.
#
#   benchmarks/careamics-env.sh [VENV_DIR]          default: benchmarks/.venv-careamics
#   PYTHON=python3.11 benchmarks/careamics-env.sh   choose the interpreter
#   FORCE=1 benchmarks/careamics-env.sh             recreate both layers from scratch
#
# CAREamics 0.3.5 pins torchvision<=0.26, which pins torch==2.11: it cannot share the project
# virtualenv (.venv, torch 2.13). This script never touches .venv. It builds two layers:
#
# 1. a *base* venv with every package pinned in constraints/careamics-py311.txt (careamics,
#    torch 2.11, and patchsieve's own dependencies at versions that resolve with them), cached
#    OUTSIDE the clone so that CI runs and other clones reuse it:
#    ${PATCHSIEVE_CAREAMICS_BASE:-${XDG_CACHE_HOME:-~/.cache}/patchsieve/careamics-<hash>}, the
#    hash being that of the constraints file (a changed pin builds a new base). Expect a large
#    download the first time (torch 2.11 from PyPI is the CUDA build: ~5 GB installed).
# 2. a thin venv VENV_DIR inside the checkout whose site-packages adds the base's (a .pth line)
#    and holds this checkout installed editable (no download, a few seconds).
#
# Some machines cap pip with a site-wide constraints file (e.g. /etc/xdg/pip/pip.conf with
# `torch<=2.14.1`). The cap admits torch 2.11, so it is kept by default; set
# CAREAMICS_ENV_IGNORE_PIP_CONFIG=1 to install with PIP_CONFIG_FILE=/dev/null and an empty
# PIP_CONSTRAINT for these venvs only (the environment of the caller is not changed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${1:-${CAREAMICS_VENV:-$HERE/.venv-careamics}}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
PINS="$ROOT/constraints/careamics-py311.txt"
KEY="$(sha256sum "$PINS" | cut -c1-12)"
BASE="${PATCHSIEVE_CAREAMICS_BASE:-${XDG_CACHE_HOME:-$HOME/.cache}/patchsieve/careamics-$KEY}"
BASE_STAMP="$BASE/.careamics-base-installed"
STAMP="$VENV/.careamics-installed"
WANT="base=$BASE checkout=$ROOT"

pip_env=()
if [[ "${CAREAMICS_ENV_IGNORE_PIP_CONFIG:-0}" == "1" ]]; then
    pip_env=(env PIP_CONFIG_FILE=/dev/null PIP_CONSTRAINT=)
fi

if [[ "${FORCE:-0}" == "1" ]]; then
    rm -rf "$VENV" "$BASE"
fi
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -f "$BASE_STAMP" ]] \
        && "$VENV/bin/python" -c "import careamics, patchsieve" >/dev/null 2>&1; then
    echo "careamics venv ready: $VENV (base $BASE)"
    exit 0
fi

start=$(date +%s)
# ---- 1. the cached base (skipped when its stamp matches the pins)
if [[ ! -f "$BASE_STAMP" || "$(cat "$BASE_STAMP")" != "$KEY" ]] \
        || ! "$BASE/bin/python" -c "import careamics" >/dev/null 2>&1; then
    echo "== creating the CAREamics base venv $BASE with $PYTHON (pins: $PINS)"
    mkdir -p "$(dirname "$BASE")"
    (
        # one builder at a time (CI jobs sharing the cache); the stamp is written last, so an
        # interrupted build is redone from scratch by the next run
        if command -v flock >/dev/null 2>&1; then flock 9; fi
        if [[ -f "$BASE_STAMP" && "$(cat "$BASE_STAMP")" == "$KEY" ]]; then exit 0; fi
        rm -rf "$BASE"
        "$PYTHON" -m venv "$BASE"
        if ! "${pip_env[@]}" "$BASE/bin/python" -m pip install -q --disable-pip-version-check \
                -r "$PINS"; then
            echo "!! pip could not install $PINS. If a site-wide pip constraint blocks torch" >&2
            echo "!! 2.11, rerun with CAREAMICS_ENV_IGNORE_PIP_CONFIG=1 (these venvs only)." >&2
            exit 1
        fi
        echo "$KEY" > "$BASE_STAMP"
    ) 9>"$BASE.lock"
fi
site_of() { "$1/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
BASE_SITE="$(site_of "$BASE")"

# ---- 2. the thin venv of this checkout
echo "== creating $VENV (sees $BASE_SITE; this checkout editable)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
VENV_SITE="$(site_of "$VENV")"
echo "import site; site.addsitedir('$BASE_SITE')" > "$VENV_SITE/careamics-base.pth"
# no build isolation: hatchling is in the base, so this step needs no network
"${pip_env[@]}" "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
    --no-build-isolation -e "$ROOT"

"$VENV/bin/python" - <<'EOF'
import careamics, numpy, torch, patchsieve
print(f"careamics {careamics.__version__}  torch {torch.__version__}  numpy {numpy.__version__}  "
      f"patchsieve {patchsieve.__version__} ({patchsieve.__file__})")
EOF
echo "$WANT" > "$STAMP"
end=$(date +%s)
echo "careamics venv ready: $VENV (base $BASE, $(du -sh "$BASE" | cut -f1)) in $((end - start)) s"
