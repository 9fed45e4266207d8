#!/usr/bin/env bash
# Create (idempotently) the virtualenvs of the peer libraries the dataset benchmark compares with.
#
#   benchmarks/peers-env.sh                 both venvs
#   benchmarks/peers-env.sh peers           benchmarks/.venv-peers: TorchIO 1.2.1 + MONAI, torch 2.13
#   benchmarks/peers-env.sh zarrdataset     benchmarks/.venv-zarrdataset: zarrdataset 0.2.2 (zarr<3)
#   PYTHON=python3.11 FORCE=1 benchmarks/peers-env.sh    interpreter / recreate from scratch
#
# torch is installed first with an exact pin (TORCH_VERSION, default 2.13.0, the project's pin):
# where a local CPU wheel exists, pip takes it; elsewhere pip downloads the build for the
# platform. The project venv (.venv) is never touched.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHIO_VERSION="${TORCHIO_VERSION:-1.2.1}"
MONAI_SPEC="${MONAI_SPEC:-monai}"
ZARRDATASET_VERSION="${ZARRDATASET_VERSION:-0.2.2}"
WHICH="${1:-all}"

make_venv() {  # make_venv DIR STAMP_TEXT CHECK_IMPORTS PACKAGES...
    local venv="$1" want="$2" check="$3"
    shift 3
    local stamp="$venv/.peers-installed"
    if [[ "${FORCE:-0}" == "1" ]]; then rm -rf "$venv"; fi
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
            && "$venv/bin/python" -c "import $check" >/dev/null 2>&1; then
        echo "venv ready: $venv ($want)"
        return 0
    fi
    local start size
    start=$(date +%s)
    echo "== creating $venv with $PYTHON ($want)"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    # torch first, exactly pinned, so that no later requirement pulls another build
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "torch==$TORCH_VERSION" psutil "$@"
    "$venv/bin/python" -c "import $check, torch; print('imports ok:', '$check', 'torch', torch.__version__)"
    echo "$want" > "$stamp"
    size=$(du -sh "$venv" | cut -f1)
    echo "venv ready: $venv ($want) in $(( $(date +%s) - start )) s, $size"
}

if [[ "$WHICH" == "all" || "$WHICH" == "peers" ]]; then
    make_venv "${PEERS_VENV:-$HERE/.venv-peers}" \
        "torchio==$TORCHIO_VERSION $MONAI_SPEC torch==$TORCH_VERSION" "torchio, monai" \
        "torchio==$TORCHIO_VERSION" "$MONAI_SPEC"
fi
if [[ "$WHICH" == "all" || "$WHICH" == "zarrdataset" ]]; then
    make_venv "${ZARRDATASET_VENV:-$HERE/.venv-zarrdataset}" \
        "zarrdataset==$ZARRDATASET_VERSION torch==$TORCH_VERSION" "zarrdataset, zarr" \
        "zarrdataset==$ZARRDATASET_VERSION" "zarr<3"
fi
