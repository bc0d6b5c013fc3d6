"""napari first, then Plugins > I-MedSAM annotator, load, draw a box: in a fresh process, as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model", ["demo", "litemedsam"])  # litemedsam imports timm/torchvision in the worker
def test_plugin_menu_after_the_window_is_shown_loads_the_model_and_segments_a_box(model):
    run = subprocess.run([sys.executable, "-m", "tests.gui.menu_journey", model], cwd=ROOT, capture_output=True,
                         text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, f"exit {run.returncode} (-11 is a segfault)\n{run.stdout}\n{run.stderr[-3000:]}"
    assert "liver Dice" in run.stdout
    print(run.stdout.strip())


def test_importing_the_widget_loads_no_model_code():
    code = ("import sys, napari_imedsam.widgets.dock; "
            "print(sorted(m for m in ('torch', 'torchvision', 'triton', 'segment_anything') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
