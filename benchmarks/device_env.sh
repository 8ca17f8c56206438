# Source on the GPU machine (from the repo root) before a vLLM benchmark:
#   source benchmarks/device_env.sh
# Copies whatever parts of the gpu-kit (.gpu/parts) and of the SmolLM2 GGUF (.smol/) this
# call carried to /root (the machine keeps them while warm), installs vLLM 0.26 from the
# kit once all parts are there, registers the plugin's entry point for that vLLM, and
# sets the build and Python paths. Safe to source again on a warm machine.
# A call carries at most 64 MiB (this tree, about 6.5 MB, plus one part): when the kit's
# 60 MiB parts no longer fit beside the tree, re-split its archive into 50 MiB parts
# (install.sh checks only the archive's sum):
#   cd .gpu && rm parts/part-0? && split -b 50M -d -a 2 build/vllm-bundle.tar.zst parts/part- \
#     && { grep vllm-bundle parts/SHA256SUMS; (cd parts && sha256sum part-0?); } > s && mv s parts/SHA256SUMS
mkdir -p /root/gpustage /root/smol
for f in .gpu/parts/part-0? .gpu/parts/SHA256SUMS; do [ -f "$f" ] && cp "$f" /root/gpustage/; done
for f in .smol/*; do [ -e "$f" ] && cp -r "$f" /root/smol/; done
if [ ! -f /opt/vllm-site/env.sh ] && [ -f .gpu/install.sh ] && [ -f /root/gpustage/SHA256SUMS ]; then
  bash .gpu/install.sh > /root/install.log 2>&1 || tail -20 /root/install.log
fi
if [ -f /opt/vllm-site/env.sh ]; then
  source /opt/vllm-site/env.sh
  d=/opt/vllm-site/wina_vllm-0.1.0.dist-info
  mkdir -p "$d"
  printf 'Metadata-Version: 2.1\nName: wina-vllm\nVersion: 0.1.0\n' > "$d/METADATA"
  printf '[vllm.general_plugins]\nwina = wina_vllm:register\n' > "$d/entry_points.txt"
fi
export PYTHONPATH=$PWD:/root/smol/pylib${PYTHONPATH:+:$PYTHONPATH}
export WINA_BUILD_DIR=/tmp/wina-build TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
