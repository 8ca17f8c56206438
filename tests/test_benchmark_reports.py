"""The benchmark scripts' report writers, on synthetic rows (the runs need a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_load_test_replot_draws_the_png_from_the_json(tmp_path):
    rows = [{"variant": v, "concurrency": c, "out_tok_s": 100.0 * c * (1.1 if v != "dense" else 1),
             "ttft_ms": 40.0 + c, "tpot_ms": 5.0} for v in ("dense", "wina") for c in (1, 4)]
    (tmp_path / "load_test.json").write_text(json.dumps(rows))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/load_test.py"), "--replot",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "load_test.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_load_test_needs_settings_to_run():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/load_test.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--wina is required" in proc.stderr
