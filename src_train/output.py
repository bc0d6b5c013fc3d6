"""Where a training run's result goes, checked before the run: options, name, folder, free space;
and version numbers reserved atomically, so concurrent runs never overwrite each other's result.

`next_version_path` reserves `vNNN` with a hidden marker `.vNNN.reserved` created with O_EXCL
(holding the owner's pid and host); the result is then linked into place without overwriting, and
the marker removed. Markers of finished versions and of processes that died are cleaned up, as are
temporaries of saves killed half-way.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from napari_imedsam._atomic import clean_stale_temporaries, pid_alive, temp_path
from napari_imedsam.errors import InputError

if TYPE_CHECKING:
    from .trainer import TrainOptions

VERSION_PATTERN = re.compile(r"^v(\d{3,})\.safetensors$")
MARKER_PATTERN = re.compile(r"^\.v(\d{3,})\.reserved$")
MODES = ("decoder", "adapters", "full", "fine")
SPARE_BYTES = 1 << 20
OWNERLESS_MARKER_S = 60.0  # a reservation with no owner written in it this long after its creation is stale


def check_options(options: TrainOptions) -> None:
    """Refuse options that would train nothing, or silently mean something else (0 s as "no limit")."""
    if options.mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {options.mode!r}")
    for name in ("epochs", "batch_size", "n_points", "validate_every"):  # validate_every None: a tenth of the steps
        _check_count(name, getattr(options, name, None), optional=name == "validate_every")
    check_run_limits(getattr(options, "steps", None), options.max_seconds, options.val_fraction)
    if not (_number(getattr(options, "clicks", 0.0)) and 0.0 <= getattr(options, "clicks", 0.0) <= 1.0):
        raise InputError(f"clicks must be a fraction in [0, 1], got {options.clicks!r}")
    for name in ("lr_adapters", "lr_decoder", "lr_encoder"):
        if not (_number(getattr(options, name)) and getattr(options, name) > 0):
            raise InputError(f"{name} must be a positive number, got {getattr(options, name)!r}")
    if getattr(options, "add_sf_fusion", False) and options.mode not in ("adapters", "full"):
        raise InputError(f"--sf-fusion adds encoder adapters: train them in 'adapters' or 'full' mode, "
                         f"not {options.mode!r}")
    margin = options.zoom_margin
    if margin is not None and not (_number(margin) and 0.0 <= margin <= 2.0):
        raise InputError(f"zoom_margin must be in 0..2, got {margin!r}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_count(name: str, value: object, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")


def check_run_limits(steps: int | None, max_seconds: float | None, val_fraction: float) -> None:
    """What every training mode (second stages included) refuses: `steps` below 1 (None: count epochs or
    the mode's default), a time limit that is not positive (None: no limit), a validation share outside [0, 1)."""
    _check_count("steps", steps, optional=True)
    if max_seconds is not None and not (_number(max_seconds) and max_seconds > 0):
        raise InputError(f"max-seconds must be a positive number of seconds (omit it for no limit), "
                         f"got {max_seconds!r}")
    if not (_number(val_fraction) and 0.0 <= val_fraction < 1.0):
        raise InputError(f"val-fraction must be in [0, 1), got {val_fraction!r}")


def check_name(name: str) -> str:
    """An adapter name is one plain folder name: it cannot climb out of OUT/adapters/."""
    bad = (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or len(name) > 100
           or any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/"))
           or any(ord(c) < 32 for c in name))
    if bad:
        raise InputError(f"--name {name!r}: an adapter name is one folder name (no '/', '\\\\', leading '.', "
                         "or control characters), e.g. liver_ct")
    return name


def _owner() -> str:
    return f"{os.getpid()} {socket.gethostname()}"


def _marker_is_stale(marker: Path, folder: Path) -> bool:
    number = MARKER_PATTERN.match(marker.name).group(1)
    if (folder / f"v{number}.safetensors").exists():
        return True  # the version was saved; the marker is no longer needed
    try:
        pid, host = marker.read_text().split(" ", 1)
    except ValueError:  # no owner in it: its writer died (or the disk filled) between creating and writing it
        try:
            return time.time() - marker.stat().st_mtime > OWNERLESS_MARKER_S
        except OSError:
            return False
    except OSError:
        return False
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def clean_stale(folder: Path) -> None:
    """Remove temporaries of saves killed half-way and reservations their process no longer needs."""
    clean_stale_temporaries(folder)
    for entry in folder.iterdir() if folder.is_dir() else ():
        if MARKER_PATTERN.match(entry.name) and _marker_is_stale(entry, folder):
            entry.unlink(missing_ok=True)


def next_version_path(folder: Path) -> Path:
    """Reserve and return `folder/vNNN.safetensors`, one above every saved or reserved version: never
    an existing file, and never the name another process holds (see `release_version`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    while True:
        taken = [int(m.group(1)) for p in folder.iterdir()
                 if (m := VERSION_PATTERN.match(p.name) or MARKER_PATTERN.match(p.name))]
        number = f"{max(taken, default=0) + 1:03d}"
        marker = folder / f".v{number}.reserved"
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(_owner())
        except OSError:  # a full disk: no marker left behind that names no one
            marker.unlink(missing_ok=True)
            raise
        path = folder / f"v{number}.safetensors"
        if path.exists():  # saved and released between our listing and our marker
            marker.unlink(missing_ok=True)
            continue
        return path


def release_version(path: Path) -> None:
    """Drop the reservation of `path` (after saving it, or when giving it up)."""
    (path.parent / f".{path.stem}.reserved").unlink(missing_ok=True)


def save_new_version(folder: Path, save: Callable[[Path], Path]) -> Path:
    """`save(path)` to a freshly reserved version (it must not overwrite); on a clash, the next one."""
    while True:
        path = next_version_path(folder)
        try:
            return save(path)
        except FileExistsError:
            continue
        finally:
            release_version(path)


def missing_folders(out_dir: str | os.PathLike, name: str, kind: str = "adapters") -> list[Path]:
    """The folders of `OUT/KIND/NAME` that do not exist yet (what `prepare_output` creates), deepest first."""
    folder = Path(out_dir) / kind / check_name(name)
    return [path for path in (folder, folder.parent, folder.parent.parent) if not path.exists()]


def remove_if_empty(folders: list[Path]) -> None:
    """Take back folders a run created and left empty (it saved nothing), deepest first."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another run wrote there meanwhile), or already gone
            return


def prepare_output(out_dir: str | os.PathLike, name: str, needed_bytes: int, kind: str = "adapters") -> Path:
    """Before training: the version folder (`OUT/KIND/NAME`) can be created and written, and has room for
    the result. Also removes what killed saves left behind. Returns the folder."""
    folder = Path(out_dir) / kind / check_name(name)
    created = missing_folders(out_dir, name, kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale(folder)
        probe = temp_path(folder / "probe")
        try:
            with open(probe, "wb") as handle:
                handle.write(b"imedsam")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            probe.unlink(missing_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        remove_if_empty(created)  # a refused run leaves nothing behind
        reason = exc.strerror or str(exc)
        raise InputError(f"{folder}: cannot save the training result there ({reason}); "
                         "choose another output folder") from None
    if free < needed_bytes + SPARE_BYTES:
        remove_if_empty(created)
        raise InputError(f"{folder}: {free / 1e6:.1f} MB free, the result needs {needed_bytes / 1e6:.1f} MB "
                         f"({os.strerror(errno.ENOSPC)}); free space or choose another output folder")
    return folder


def second_stage_header(loaded, samples: list, n_train: int, n_val: int, before: dict, after: dict, helps: bool,
                        steps: int, options, command: str) -> dict:
    """The header of a second stage trained on a frozen model (corrector, click refiner): its base, data,
    what validation measured before and with it, and its options (its network config goes separately)."""
    from .data import manifest_sha256

    return {"base_model": loaded.model_id, "base_sha256": loaded.weights_sha256, "command": command,
            "data_manifest_sha256": manifest_sha256(samples), "n_train": n_train, "n_val": n_val,
            "metrics_before": before, "metrics": after, "helps": helps, "steps": steps,
            "options": {k: v for k, v in vars(options).items() if k != "config"}}


def save_result(folder: Path, write: Callable[..., Path]) -> Path:
    """Save a run's result as a new version; if that fails (disk filled up during the run, folder
    removed), save it to the system's temporary folder instead and say where: never lose a run."""
    try:
        return save_new_version(folder, lambda path: write(path, overwrite=False))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        stamp = f"{folder.name}-{os.getpid()}-{int(time.time())}"
        rescue = Path(tempfile.gettempdir()) / f"imedsam-unsaved-{stamp}.safetensors"
        try:
            write(rescue, overwrite=False)
        except OSError:
            raise InputError(f"{folder}: could not save the trained weights ({reason}), nor to {rescue.parent}"
                             ) from None
        raise InputError(f"{folder}: could not save the trained weights ({reason}); they were saved to {rescue} "
                         "instead") from None
