"""The embedding store: memory budget in bytes, float16 spill to disk and back, disk budget, stale keys."""

from __future__ import annotations

import os

import numpy as np
import torch

from napari_imedsam.inference.embedding_store import FOLDER_PATTERN, Embedding, EmbeddingStore
from napari_imedsam.inference.predictor import Predictor
from napari_imedsam.inference.preprocess import Geometry

from .conftest import untrained

SHAPE = (1, 8, 16, 16)  # 2,048 values: 4 KiB as float16
SIZE = 2 * int(np.prod(SHAPE))


def embedding(seed: int, key: tuple | None = None) -> Embedding:
    tensor = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * 10
    return Embedding(tensor, Geometry(40, 50, 64), key if key is not None else ("digest", seed, "tiny", "sha", "base"))


def test_memory_is_bounded_in_bytes_and_the_rest_spills_to_disk(tmp_path):
    store = EmbeddingStore(memory_bytes=2 * SIZE + 100, spill_root=tmp_path)
    items = [embedding(i) for i in range(5)]
    for item in items:
        store.put(item)
    assert store.memory_used <= store.memory_bytes and store.memory_used == 2 * SIZE
    assert store.spills == 3 and len(store) == 5 and store.disk_used == 3 * SIZE
    (folder,) = tmp_path.iterdir()
    assert FOLDER_PATTERN.match(folder.name) and len(list(folder.iterdir())) == 3
    assert store.get(items[0].key) is not None  # from disk, back into memory (evicting another)
    assert (store.hits, store.disk_hits, store.misses) == (1, 1, 0)
    assert store.memory_used == 2 * SIZE
    store.close()
    assert not folder.exists()


def test_disk_budget_evicts_the_least_recently_used_file(tmp_path):
    store = EmbeddingStore(memory_bytes=SIZE, disk_bytes=2 * SIZE, spill_root=tmp_path)
    items = [embedding(i) for i in range(5)]
    for item in items:
        store.put(item)  # items 0..3 spill in turn; the disk keeps the two newest
    assert store.disk_used == 2 * SIZE and len(store) == 3
    assert store.get(items[0].key) is None and store.get(items[1].key) is None
    assert store.get(items[2].key) is not None and store.get(items[4].key) is not None
    assert store.misses == 2


def test_spill_and_reload_are_bit_for_bit_and_within_float16_of_the_encoder(tmp_path):
    store = EmbeddingStore(memory_bytes=SIZE, spill_root=tmp_path)
    item = embedding(0)
    kept = store.put(item)  # what every later get returns: float16-rounded, as float32
    assert kept.tensor.dtype == torch.float32
    # float16 keeps 11 significant bits: relative error at most 2^-11 (values here are far from subnormal)
    assert torch.all((kept.tensor - item.tensor).abs() <= 2.0 ** -11 * item.tensor.abs() + 1e-7)
    store.put(embedding(1))  # item spills
    assert item.key not in store._memory
    back = store.get(item.key)
    assert torch.equal(back.tensor, kept.tensor) and back.geometry == item.geometry and back.key == item.key


def test_a_stale_key_is_a_miss(tmp_path):
    store = EmbeddingStore(memory_bytes=SIZE, spill_root=tmp_path)
    key = ("digest", 3, "tiny", "sha", "base", ("window", 40.0, 400.0, None, None), 256)
    store.put(embedding(0, key))
    for changed in (("digest", 3, "tiny", "sha", "v1", *key[5:]),  # another adapter version
                    ("digest", 3, "tiny", "sha", "base", ("window", 40.0, 80.0, None, None), 256),  # window
                    ("other", *key[1:]), (key[0], 4, *key[2:]), (*key[:6], 512)):  # content, slice, size
        assert store.get(changed) is None
    assert store.misses == 5
    # a spilled file that does not hold the key asked for (renamed, or a hash collision) is a miss too
    other = ("digest", 9, "tiny", "sha", "base")
    store.put(embedding(1, other))  # key spills
    store.put(embedding(2))  # other spills
    folder = store._folder
    os.replace(folder / store._name(key), folder / store._name(other))  # other's file now holds key's tensors
    assert store.get(other) is None


def test_dead_processes_spill_folders_are_removed(tmp_path):
    from napari_imedsam._atomic import _host_tag

    dead = tmp_path / f"999999999-{_host_tag()}-abcdef"
    dead.mkdir()
    (dead / "x.safetensors").write_bytes(b"0")
    store = EmbeddingStore(memory_bytes=SIZE, spill_root=tmp_path)
    store.put(embedding(0))
    store.put(embedding(1))
    assert not dead.exists() and store._folder.exists()


def test_predictions_from_memory_and_from_disk_are_identical(tmp_path):
    image = np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32)
    predictor = Predictor(untrained(), cache=EmbeddingStore(memory_bytes=1, spill_root=tmp_path))
    first = predictor.predict(image, (5, 5, 30, 30), slice_index=0)  # encoded
    again = predictor.predict(image, (5, 5, 30, 30), slice_index=0)  # from memory
    predictor.predict(image + 1, (5, 5, 30, 30), slice_index=1)  # slice 0 spills
    assert predictor.cache.spills == 1
    reloaded = predictor.predict(image, (5, 5, 30, 30), slice_index=0)  # from disk
    assert predictor.cache.disk_hits == 1 and predictor.cache.misses == 2
    for result in (again, reloaded):
        np.testing.assert_array_equal(result.refined_prob, first.refined_prob)
        np.testing.assert_array_equal(result.uncertainty, first.uncertainty)
