"""The dock's import helpers: torch's libraries mapped ahead of `import torch` (GIL released), in a
fresh interpreter so the test sees a process without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
from pathlib import Path
from napari_imedsam._lazy_imports import preload_torch_libraries
mapped = preload_torch_libraries()
maps = Path('/proc/self/maps').read_text()
assert 'torch' not in sys.modules, 'preloading imported torch'
print('mapped', mapped, 'libtorch_cpu' in maps)
import torch
print('sum', float((torch.arange(4.0) @ torch.ones(4)).item()))
print('again', preload_torch_libraries())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dlopen preloading is Linux-only")
def test_preload_maps_libtorch_before_import_and_torch_then_works():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    lines = out.stdout.split("\n")
    assert "mapped True True" in lines  # libtorch_cpu (a dependency of libtorch) is in the process
    assert "sum 6.0" in lines  # torch imported over the mapped libraries computes
    assert "again False" in lines  # once torch is imported it does nothing


def test_without_collector_pauses_holds_the_collector_then_freezes_what_was_imported():
    import gc

    from napari_imedsam._lazy_imports import without_collector_pauses

    gc.unfreeze()
    try:
        with without_collector_pauses():
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]  # stands for the imported modules' objects
        assert gc.isenabled() and gc.get_freeze_count() >= len(made)
        gc.disable()  # a caller that had the collector off keeps it off
        with without_collector_pauses():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
