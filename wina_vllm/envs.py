"""Every WINA_* environment variable, typed and documented, in one place."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def build_dir() -> Path:
    """WINA_BUILD_DIR: where the CUDA extension is built and cached.

    Default: ``~/.cache/wina-vllm/torch-<version>``, one per torch build, because an
    extension only loads into the torch it was compiled against.
    """
    default = Path.home() / ".cache" / "wina-vllm" / f"torch-{torch.__version__}"
    return Path(os.environ.get("WINA_BUILD_DIR", str(default)))


def build_verbose() -> bool:
    """WINA_BUILD_VERBOSE=1: print the compiler's commands and output."""
    return os.environ.get("WINA_BUILD_VERBOSE", "0") == "1"
