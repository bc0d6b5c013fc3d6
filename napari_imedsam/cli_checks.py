"""Command-line checks done before any work: argument values, output paths, one-line messages."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError, os_error_text
from .io.images import check_output_path

VALUE_OPTIONS = ("--box", "--window", "--size")  # values that may start with a minus sign
NEGATIVE_VALUE = re.compile(r"^-\.?\d")
MAX_OUTPUT_SIDE = 16384


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """`--box -5,0,40,40` -> `--box=-5,0,40,40`: argparse would take the value for an option."""
    joined, index = [], 0
    while index < len(argv):
        arg = argv[index]
        if arg in VALUE_OPTIONS and index + 1 < len(argv) and NEGATIVE_VALUE.match(argv[index + 1]):
            joined.append(f"{arg}={argv[index + 1]}")
            index += 2
            continue
        joined.append(arg)
        index += 1
    return joined


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`--size H,W`: two whole numbers, each 2..16384."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise InputError(f"--size (H,W) must be 2 comma-separated whole numbers, got {text!r}")
    if not all(2 <= v <= MAX_OUTPUT_SIDE for v in values):
        raise InputError(f"--size {text}: each side must be 2..{MAX_OUTPUT_SIDE} pixels")
    return values  # type: ignore[return-value]


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_outputs(outputs: dict[str, str | None], inputs: Sequence[str]) -> None:
    """Every output path is writable, of a supported type, distinct from the others and from the inputs."""
    chosen = {flag: Path(path) for flag, path in outputs.items() if path}
    for flag, path in chosen.items():
        try:
            check_output_path(path)
        except InputError as exc:
            raise InputError(f"{flag} {exc}") from None
        for source in inputs:
            if _same(path, Path(source)):
                raise InputError(f"{flag} {path} is the input image; refusing to overwrite it")
    flags = list(chosen)
    for i, first in enumerate(flags):
        for second in flags[i + 1:]:
            if _same(chosen[first], chosen[second]):
                raise InputError(f"{first} and {second} name the same file {chosen[first]}")


def positive_input_size(text: str) -> int:
    """argparse type for `--input-size`: a whole number of pixels, 16..4096."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 16 <= value <= 4096:
        import argparse

        raise argparse.ArgumentTypeError(f"must be a whole number of pixels in 16..4096, got {text!r}")
    return value


def json_safe(value: object) -> object:
    """NaN and infinities as null: what `json.dumps` writes is then strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """warnings.showwarning replacement: one `imedsam: warning:` line, no source location."""
    print(f"imedsam: warning: {message}", file=sys.stderr)


def error_message(exc: BaseException) -> str:
    """One line for a user error: OSErrors as `file: reason`, anything else its first line."""
    if isinstance(exc, OSError) and exc.strerror:
        text = os_error_text(exc)
    else:
        text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
