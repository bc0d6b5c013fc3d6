"""Atomic file writes: write a temporary file beside the target, then rename (or link) it into place.

Temporary names are `.<target name>.~<pid>-<host>-<random>.tmp`: hidden, never ending in a data
extension (so nnU-Net or a glob for `*.nii.gz` cannot mistake a partial file for data), and
naming the process that writes them, so a later writer can tell a temporary whose process died
(kill -9, power loss) from one still being written, and remove only the former
(`clean_stale_temporaries`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.~(?P<pid>\d+)-(?P<host>[0-9a-f]{6})-[0-9a-z]{6}\.tmp$")
# Temporaries of versions before this scheme: tempfile.mkstemp names with the target's extension.
LEGACY_PATTERN = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}(\.tmp|\.nii\.gz|\.nii|\.png|\.tiff?|\.npy)$")
STALE_AFTER_S = 24 * 3600  # a temporary this old is stale whoever wrote it (another host, a reused pid)
LEGACY_STALE_AFTER_S = 3600

Writer = Callable[[str], None]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path` (see the module docstring)."""
    tag = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))
    return path.with_name(f".{path.name}.~{os.getpid()}-{_host_tag()}-{tag}.tmp")


def naming(path: str | os.PathLike, exc: OSError) -> OSError:
    """`exc` again, naming `path` (a write's ENOSPC names no file; a rename names the hidden temporary)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def _stage(path: Path, writer: Writer) -> Path:
    """Run `writer` on a new temporary beside `path`; flush it to disk; remove it if anything fails."""
    tmp = temp_path(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        writer(str(tmp))
        with open(tmp, "r+b") as handle:  # on disk before it gets the final name
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())  # created 0600; give the file the usual permissions
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:  # e.g. ENOSPC from a write: name the file
            raise naming(path, exc) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename `tmp` to `path`; without `overwrite`, link it there instead (fails if `path` exists)."""
    if overwrite:
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. an immutable target: name it, not the hidden temporary
            raise naming(path, exc) from exc
        return
    try:
        os.link(tmp, path)
    except OSError as exc:  # file systems without hard links: check, then rename
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def atomic_write(path: str | os.PathLike, writer: Writer, overwrite: bool = True) -> Path:
    """Call `writer(tmp_path)`, then move the result to `path`: readers never see a half-written file,
    and an interrupted write leaves the previous file (or none). The temporary's name has no data
    extension: writers that choose a format by extension must be told the format. With
    `overwrite=False` an existing `path` is never replaced (`FileExistsError`, temporary removed)."""
    return atomic_write_many([(path, writer)], overwrite=overwrite)[0]


def atomic_write_many(items: Sequence[tuple[str | os.PathLike, Writer]], overwrite: bool = True) -> list[Path]:
    """Write several files all or nothing: every temporary is written first, and only when all
    succeeded are they moved into place (a full disk or a failing writer leaves no new file)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for target, writer in items:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_stage(path, writer), path))
        for index, (tmp, path) in enumerate(staged):
            _publish(tmp, path, overwrite)
            staged[index] = (path, path)
    finally:
        for tmp, path in staged:
            if tmp != path:
                tmp.unlink(missing_ok=True)
    return [path for _, path in staged]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (always "yes" on Windows, where
    os.kill(pid, 0) would end the process: there, only age makes a temporary stale)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists but belongs to someone else / not a usable pid
    return True


def is_temporary(name: str) -> bool:
    """Whether a file name is one of our temporaries (current or legacy naming)."""
    return bool(TEMP_PATTERN.match(name) or LEGACY_PATTERN.match(name))


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries in `folder` left by writers that died: those of a process on this host
    that no longer runs, and any older than a day (legacy ones: an hour). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, host, now = [], _host_tag(), time.time()
    for entry in folder.iterdir():
        match = TEMP_PATTERN.match(entry.name)
        legacy = None if match else LEGACY_PATTERN.match(entry.name)
        if not (match or legacy) or entry.is_symlink() or not entry.is_file():
            continue
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        if match:
            dead = match["host"] == host and not pid_alive(int(match["pid"]))
            stale = dead or age > STALE_AFTER_S
        else:
            stale = age > LEGACY_STALE_AFTER_S
        if stale:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
