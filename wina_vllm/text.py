"""Calibration text the project generates itself, so it is never the evaluation text.

It is the English prose of the Python standard library's docstrings, which
every machine has offline. Evaluation uses WikiText-2 (see benchmarks/).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings

_SKIP_PREFIXES = ("_", "test", "idlelib", "tkinter", "turtle", "lib2to3", "ensurepip", "this",
                  "antigravity", "pydoc_data", "venv", "xxsubtype")


def stdlib_prose(min_chars: int = 200_000) -> str:
    """Docstrings (over 80 characters) of stdlib modules and their classes and functions."""
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith(_SKIP_PREFIXES))
    parts: list[str] = []
    total = 0
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated modules still have good prose
                module = importlib.import_module(name)
        except Exception:  # platform-specific modules fail to import; they add nothing here
            continue
        members = [v for _, v in sorted(vars(module).items())
                   if (inspect.isclass(v) or inspect.isfunction(v))
                   and getattr(v, "__module__", None) == name]
        for obj in [module, *members]:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                parts.append(doc)
                total += len(doc)
        if total >= min_chars:
            break
    return "\n\n".join(parts)
