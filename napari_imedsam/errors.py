"""Errors a user can cause, shared by every layer: each message says what is wrong and how to fix it."""

from __future__ import annotations


class InputError(ValueError):
    """Input a user can fix (bad box, wrong dimensionality, empty image); the message says how."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the reason."""


def os_error_text(exc: OSError) -> str:
    """An OSError in plain words, naming the file or folder and what to do: a full disk (with the space
    left), a read-only or forbidden folder; other errors as `file: reason`."""
    import errno
    import os
    import shutil

    path = exc.filename or ""
    if exc.errno == errno.ENOSPC:
        free = ""
        probe = os.path.abspath(path) if path else ""
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe) if os.path.dirname(probe) != probe else ""
        if probe:
            left = shutil.disk_usage(probe).free
            free = f", {left / 2**20:.1f} MB free" if left >= 2**20 else f", {left / 2**10:.0f} KB free"
        where = f"the disk holding {path}" if path else "the disk"
        return f"{where} is full ({exc.strerror or 'no space left'}{free}): free some space or choose a folder " \
               "on another disk"
    if exc.errno == errno.EROFS:
        return f"{path or 'the folder'} is on a read-only file system: choose a folder you can write to"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{path or 'the file'}: permission denied: choose a folder you can write to"
    if exc.strerror:
        return f"{path}: {exc.strerror}" if path else exc.strerror
    return str(exc) or type(exc).__name__
