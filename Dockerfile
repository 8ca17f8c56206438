# wina-vllm on the official vLLM OpenAI server image, with the CUDA op built ahead of time.
#   docker build -t wina-vllm .
#   docker run --gpus all -p 8000:8000 wina-vllm meta-llama/Llama-3.1-8B-Instruct \
#       --quantization wina --additional-config '{"wina": {"sparsity": 0.5}}'
ARG VLLM_VERSION=v0.26.0
FROM vllm/vllm-openai:${VLLM_VERSION}

# Targets of the ahead-of-time kernel build: Ampere, Ada, Hopper.
ENV TORCH_CUDA_ARCH_LIST="8.0 8.9 9.0" \
    WINA_BUILD_DIR=/opt/wina-vllm/build \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/wina-vllm/src
COPY pyproject.toml README.md ./
COPY wina_vllm ./wina_vllm

# The ahead-of-time kernel build needs nvcc in the image (vLLM images carry the CUDA
# toolchain for FlashInfer's JIT); stop with a clear message if this base has none.
RUN [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] || command -v nvcc >/dev/null || { echo "wina-vllm: base image has no nvcc; use a vLLM image with the CUDA toolkit" >&2; exit 1; }
# --no-deps: the image's vLLM, torch and CUDA stay exactly as shipped.
RUN python3 -m pip install --no-deps . \
    && python3 -m pip install "ninja>=1.11" \
    && wina-vllm build-ext

WORKDIR /
# The base image's entrypoint is `vllm serve`: arguments are the model and its flags.
