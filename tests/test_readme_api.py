"""The README's Python API block runs as written (a user copies it into a script)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_python_block_runs_as_written(capsys):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(block, "README.md (Python API)", "exec"), {})
    assert float(capsys.readouterr().out.split()[-1]) > 0.8  # the printed Dice on the bundled liver
