"""Helpers of the fault-injection suite (tests/test_faults*.py): run a case, and say how it failed.

A case that goes wrong raises one of the `Harm` classes below, so the suite can count, per run,
how many cases lose data, end in a traceback, are accepted silently or give an unclear error
(`pytest tests/test_faults*.py` prints the counts at the end; see `report`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import napari_imedsam

REPO = Path(napari_imedsam.__file__).resolve().parent.parent


class Harm(AssertionError):
    """A fault case that was not handled."""

    label = "other"


class DataLost(Harm):
    """Data lost or corrupted, or files written although the command failed."""

    label = "data lost"


class Traceback(Harm):
    """An exception escaped instead of one clear error."""

    label = "traceback"


class Silent(Harm):
    """Bad input accepted without an error or a warning."""

    label = "accepted silently"


class Unclear(Harm):
    """An error, but not one `imedsam: error:` line naming the problem (or several lines, colour codes)."""

    label = "unclear error"


def env() -> dict[str, str]:
    """Environment for subprocesses: the code under test, one thread each."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (recursively) with its bytes; an export's empty lock file is not data."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".imedsam.lock"}


def run_cli(capsys, argv: Sequence[str]) -> tuple[int, str, str]:
    """`imedsam ARGV` in this process: (exit code, stderr, stdout); an escaping exception is a Traceback."""
    from napari_imedsam.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:
        raise Traceback(f"{type(exc).__name__}: {exc}") from exc
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def check_one_error(code: int, err: str, mentions: Iterable[str] = ()) -> str:
    """Exit 2 with exactly one `imedsam: error:` line mentioning each of `mentions`."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("imedsam: warning:")]
    if code == 0:
        raise Silent("exit 0 where an error was expected")
    if "Traceback (most recent call last)" in err:
        raise Traceback(err.strip().splitlines()[-1])
    if code != 2 or len(lines) != 1 or not lines[0].startswith("imedsam: error:") or "\x1b[" in err:
        raise Unclear(f"exit {code}, stderr {err.strip()[:300]!r}")
    _check_mentions(lines[0], mentions)
    return lines[0]


def _check_mentions(message: str, mentions: Iterable[str]) -> None:
    """Each of `mentions` is in the message; words other than paths must be outside the paths (which
    hold test names)."""
    bare = re.sub(r"/[^\s:;,()'\"]+", "", message)
    for text in mentions:
        if str(text) not in (message if os.sep in str(text) else bare):
            raise Unclear(f"the message does not mention {text!r}: {message}")


def expect_error(capsys, argv: Sequence[str], mentions: Iterable[str] = (), watch: Iterable[Path] = ()) -> str:
    """The command fails with one clear line, and the folders in `watch` are left exactly as they were."""
    folders = list(watch)
    before = [snapshot(f) for f in folders]
    code, err, _ = run_cli(capsys, argv)
    if code == 0:
        raise Silent("exit 0 where an error was expected")
    for folder, old in zip(folders, before):
        if snapshot(folder) != old:
            raise DataLost(f"{folder} changed although the command failed ({err.strip()[:200]!r})")
    return check_one_error(code, err, mentions)


def expect_refused(call: Callable[[], object], folder: Path, mentions: Iterable[str] = ()) -> Exception:
    """An API call refuses (ValueError / OSError) and leaves `folder` exactly as it was."""
    before = snapshot(folder)
    error = None
    try:
        call()
    except (ValueError, OSError) as exc:
        error = exc
    except Exception as exc:
        raise Traceback(f"{type(exc).__name__}: {exc}") from exc
    if error is None:
        raise Silent("accepted")
    if snapshot(folder) != before:
        raise DataLost(f"{folder} changed although the call failed ({error})")
    _check_mentions(str(error), mentions)
    return error


# ---- counting, for the closing report (hooks wired in tests/conftest.py) ------------------------------
_outcomes: dict[str, str] = {}


def record(item, report) -> None:
    if not item.module.__name__.split(".")[-1].startswith("test_faults"):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.skipped:
            _outcomes[item.nodeid] = "skipped"
        elif report.passed:
            _outcomes[item.nodeid] = "handled"
        else:
            excinfo = getattr(report, "_fault_excinfo", None)
            if excinfo is not None and isinstance(excinfo.value, Harm):
                _outcomes[item.nodeid] = excinfo.value.label
            elif excinfo is not None and not isinstance(excinfo.value, AssertionError):
                _outcomes[item.nodeid] = "traceback"  # an exception the test did not expect
            else:
                _outcomes[item.nodeid] = "other"


def summary(terminalreporter) -> None:
    if not _outcomes:
        return
    order = ["handled", "data lost", "traceback", "accepted silently", "unclear error", "other", "skipped"]
    counts = {key: sum(1 for v in _outcomes.values() if v == key) for key in order}
    terminalreporter.write_line(f"fault suite: {len(_outcomes)} cases: " + ", ".join(f"{counts[k]} {k}" for k in order))
    for nodeid, outcome in sorted(_outcomes.items()):
        if outcome != "handled":
            terminalreporter.write_line(f"  {outcome:<18} {nodeid}")
