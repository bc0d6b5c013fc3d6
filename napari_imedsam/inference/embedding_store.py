"""Where image embeddings live between boxes: a memory LRU bounded in bytes, the rest on disk.

Every embedding is held as float16 (memory and disk alike), so a prediction is the same bit for bit
whether its embedding came from the encoder, from memory or from disk. float16 keeps 11 significant
bits: each value is within 2^-11 (4.9e-4) of the encoder's float32 output, relative to its size.

What the memory budget cannot hold is spilled to a private folder of this process (one safetensors
file per slice, written atomically, named by a hash of the key and holding the key itself, which is
checked on reload), evicted least-recently-used by a disk budget and removed when the store closes.
Folders left by processes that died are removed by the next store. The key is the Predictor's
(content digest, slice, model id, weights sha256, adapter version, window, input size): a different
image, model, adapter version or window is a different key, so nothing stale is ever reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .._atomic import _host_tag, atomic_write, pid_alive
from ..model.weights import safetensors_writer
from .preprocess import Geometry

log = logging.getLogger(__name__)

MEMORY_BYTES = 256 * 2**20
DISK_BYTES = 4 * 2**30
STORED_DTYPE = torch.float16
FOLDER_PATTERN = re.compile(r"^(?P<pid>\d+)-(?P<host>[0-9a-f]{6})-[0-9a-z]{6}$")


@dataclass
class Embedding:
    """An encoded slice and how it maps to the encoder input."""

    tensor: torch.Tensor  # (1, C, g, g)
    geometry: Geometry
    key: tuple
    image: torch.Tensor | None = None  # (1, 3, H, W) normalised slice, kept for models whose Dec_f reads it

    def with_tensors(self, tensor: torch.Tensor, image: torch.Tensor | None) -> Embedding:
        return Embedding(tensor, self.geometry, self.key, image)


def default_spill_root() -> Path:
    """`<IMEDSAM_CACHE_DIR or the platform cache>/embeddings`: where stores make their private folders."""
    from ..model.registry import cache_dir

    return cache_dir() / "embeddings"


def _tensors_of(embedding: Embedding) -> dict[str, torch.Tensor]:
    tensors = {"embedding": embedding.tensor}
    if embedding.image is not None:
        tensors["image"] = embedding.image
    return tensors


def _stored(embedding: Embedding) -> Embedding:
    """The form kept in the store: contiguous float16 on the CPU."""
    tensors = {k: v.detach().to("cpu", STORED_DTYPE).contiguous() for k, v in _tensors_of(embedding).items()}
    return embedding.with_tensors(tensors["embedding"], tensors.get("image"))


def _nbytes(embedding: Embedding) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors_of(embedding).values())


class EmbeddingStore:
    """Thread-safe get/put of embeddings by key; `get` returns float32 tensors on the CPU.

    `memory_bytes` bounds what is held in RAM (at least the newest embedding is always kept);
    `disk_bytes` bounds the spill folder (0 disables spilling: evicted embeddings are dropped).
    """

    def __init__(self, memory_bytes: int = MEMORY_BYTES, disk_bytes: int = DISK_BYTES,
                 spill_root: str | os.PathLike | None = None) -> None:
        self.memory_bytes, self.disk_bytes = int(memory_bytes), int(disk_bytes)
        self._spill_root = Path(spill_root) if spill_root is not None else None
        self._folder: Path | None = None
        self._memory: OrderedDict[tuple, tuple[Embedding, int]] = OrderedDict()
        self._spilling: dict[tuple, Embedding] = {}  # evicted from memory, being written to disk
        self._disk: OrderedDict[str, int] = OrderedDict()  # file name -> bytes, least recently used first
        self._lock = threading.RLock()
        self._spill_failed = False
        self.memory_used = 0
        self.hits = self.misses = self.disk_hits = self.spills = 0

    # ---- the cache surface -------------------------------------------------------------------
    def get(self, key: tuple) -> Embedding | None:
        """The embedding for `key` (float32, CPU), from memory or disk; None (a miss) if neither has it."""
        with self._lock:
            entry = self._memory.get(key)
            if entry is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return _as_float(entry[0])
            stored = self._spilling.get(key)
            if stored is None:
                stored = self._read(key)
            if stored is None:
                self.misses += 1
                return None
            self.hits += 1
            self.disk_hits += 1
            evicted = self._remember(stored)
        self._spill(evicted)
        return _as_float(stored)

    def put(self, embedding: Embedding) -> Embedding:
        """Keep an embedding; returns it as the store will give it back (float16-rounded, float32, CPU)."""
        stored = _stored(embedding)
        with self._lock:
            evicted = self._remember(stored)
        self._spill(evicted)
        return _as_float(stored)

    def __contains__(self, key: tuple) -> bool:
        with self._lock:
            return key in self._memory or key in self._spilling or self._name(key) in self._disk

    def __len__(self) -> int:
        """Embeddings this store can give back without the encoder (memory and its spill folder)."""
        with self._lock:
            names = {self._name(k) for k in self._memory} | {self._name(k) for k in self._spilling}
            return len(names | set(self._disk))

    @property
    def disk_used(self) -> int:
        with self._lock:
            return sum(self._disk.values())

    def clear(self) -> None:
        """Forget everything, in memory and on disk."""
        with self._lock:
            self._memory.clear()
            self._spilling.clear()
            self.memory_used = 0
            for name in list(self._disk):
                self._unlink(name)

    def close(self) -> None:
        """Forget everything and remove the spill folder."""
        with self._lock:
            self.clear()
            folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    # ---- memory ------------------------------------------------------------------------------
    def _remember(self, stored: Embedding) -> list[Embedding]:
        """Put into the memory LRU (lock held); returns what no longer fits, oldest first."""
        old = self._memory.pop(stored.key, None)
        if old is not None:
            self.memory_used -= old[1]
        size = _nbytes(stored)
        self._memory[stored.key] = (stored, size)
        self.memory_used += size
        evicted = []
        while self.memory_used > self.memory_bytes and len(self._memory) > 1:
            key, (item, item_size) = self._memory.popitem(last=False)
            self.memory_used -= item_size
            if self.disk_bytes > 0 and self._name(key) not in self._disk:
                self._spilling[key] = item
                evicted.append(item)
        return evicted

    # ---- disk --------------------------------------------------------------------------------
    @staticmethod
    def _name(key: tuple) -> str:
        return hashlib.sha256(repr(key).encode()).hexdigest()[:40] + ".safetensors"

    def _spill(self, items: list[Embedding]) -> None:
        """Write evicted embeddings to the spill folder (outside the lock), then enforce the disk budget."""
        for item in items:
            written = 0
            try:
                folder = self._spill_folder()
                metadata = {"key": repr(item.key), "height": str(item.geometry.height),
                            "width": str(item.geometry.width), "input_size": str(item.geometry.input_size)}
                tensors = _tensors_of(item)
                atomic_write(folder / self._name(item.key), safetensors_writer(tensors, metadata))
                written = sum(t.numel() * t.element_size() for t in tensors.values())
            except OSError as exc:
                if not self._spill_failed:
                    log.warning("napari-imedsam: cannot spill embeddings to disk (%s); they are recomputed", exc)
                self._spill_failed = True
            with self._lock:
                self._spilling.pop(item.key, None)
                if written and self._folder is not None:
                    self._disk[self._name(item.key)] = written
                    self.spills += 1
                    while sum(self._disk.values()) > self.disk_bytes and self._disk:
                        self._unlink(next(iter(self._disk)))

    def _read(self, key: tuple) -> Embedding | None:
        """A spilled embedding, if its file is there and holds this very key (lock held)."""
        name = self._name(key)
        if name not in self._disk or self._folder is None:
            return None
        try:
            with safe_open(self._folder / name, "pt") as handle:
                meta = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a dict
        except (OSError, SafetensorError):
            self._disk.pop(name, None)
            return None
        if meta.get("key") != repr(key):
            return None
        self._disk.move_to_end(name)
        geometry = Geometry(int(meta["height"]), int(meta["width"]), int(meta["input_size"]))
        return Embedding(tensors["embedding"], geometry, key, tensors.get("image"))

    def _unlink(self, name: str) -> None:
        self._disk.pop(name, None)
        if self._folder is not None:
            (self._folder / name).unlink(missing_ok=True)

    def _spill_folder(self) -> Path:
        """This store's private folder (created on first spill; stale folders of dead processes removed)."""
        with self._lock:
            if self._folder is None:
                root = self._spill_root if self._spill_root is not None else default_spill_root()
                root.mkdir(parents=True, exist_ok=True)
                _remove_dead_folders(root)
                tag = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))
                folder = root / f"{os.getpid()}-{_host_tag()}-{tag}"
                folder.mkdir()
                self._folder = folder
                weakref.finalize(self, shutil.rmtree, str(folder), True)
            return self._folder


def _as_float(stored: Embedding) -> Embedding:
    return stored.with_tensors(stored.tensor.float(), None if stored.image is None else stored.image.float())


def _remove_dead_folders(root: Path) -> None:
    """Spill folders whose process (on this host) is gone."""
    host = _host_tag()
    for entry in root.iterdir():
        match = FOLDER_PATTERN.match(entry.name)
        if match and match["host"] == host and entry.is_dir() and not pid_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
