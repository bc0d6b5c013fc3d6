"""Checkpoints: SAM layout, clear errors, adapters as safetensors, download with checksum over HTTP."""

from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from napari_imedsam.model import registry
from napari_imedsam.model.registry import REGISTRY, ModelSpec, download_checkpoint, load_model
from napari_imedsam.model.weights import CheckpointError, load_adapters, read_safetensors, save_adapters, save_model

from .conftest import untrained


def test_official_sam_layout_checkpoint_loads(sam_checkpoint):
    path, sam = sam_checkpoint
    loaded = load_model(path)
    assert loaded.network.config.name == "tiny"  # inferred from the tensors
    ours = loaded.network.state_dict()
    for key, value in sam.state_dict().items():
        assert torch.equal(ours[key], value), key
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_at_another_input_size_loads(sam_checkpoint):
    path, _ = sam_checkpoint
    loaded = load_model(path, input_size=128)
    assert loaded.network.image_encoder.pos_embed.shape[1] == 8


def test_truncated_checkpoint_fails_clearly(sam_checkpoint, tmp_path):
    path, _ = sam_checkpoint
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a readable PyTorch checkpoint"):
        load_model(bad)


def test_text_file_and_missing_file_fail_clearly(tmp_path):
    garbage = tmp_path / "notes.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth: not a readable PyTorch checkpoint"):
        load_model(garbage)
    with pytest.raises(CheckpointError, match="nowhere.pth: no such model file, and not a known model name"):
        load_model(tmp_path / "nowhere.pth")


def test_checkpoint_with_missing_and_misshapen_tensors_is_named(sam_checkpoint, tmp_path):
    _, sam = sam_checkpoint
    state = sam.state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert "broken.pth" in message and "does not fit the tiny architecture" in message
    assert "mask_decoder.iou_token.weight" in message and "prompt_encoder.no_mask_embed.weight" in message


def test_checkpoint_of_unknown_architecture_is_refused(tmp_path):
    path = tmp_path / "vit_l.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16),
                "image_encoder.blocks.23.norm1.weight": torch.zeros(1024)}, path)
    with pytest.raises(CheckpointError, match="matches no known architecture"):
        load_model(path)


def test_adapters_round_trip_with_header(tmp_path):
    torch.manual_seed(1)
    source = untrained().network
    with torch.no_grad():
        for _, p in source.parameter_groups()["lora"]:
            p.normal_()
    header = {"base_model": "tiny", "base_sha256": "untrained", "metrics": {"dice": 0.91}}
    path = save_adapters(source, tmp_path / "adapters" / "v001.safetensors", header)
    tensors, stored = read_safetensors(path)
    assert stored["metrics"] == {"dice": 0.91} and stored["config"]["name"] == "tiny"
    trainable = sum(p.numel() for ps in source.parameter_groups().values() for _, p in ps)
    assert sum(t.numel() for t in tensors.values()) == trainable  # only trainable tensors are stored
    target = untrained().network
    load_adapters(target, path, base_sha256="untrained")
    for key, value in tensors.items():
        assert torch.equal(target.state_dict()[key], value)
    with pytest.raises(CheckpointError, match="trained on base tiny"):
        load_adapters(untrained().network, path, base_sha256="f" * 64)


def test_whole_model_safetensors_round_trip_in_half_precision(tmp_path):
    source = untrained().network
    path = save_model(source, tmp_path / "demo.safetensors", {"data": "synthetic"}, half=True)
    loaded = load_model(path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[key], value.half().float())
    save_adapters(source, tmp_path / "a.safetensors", {"base_model": "x", "base_sha256": "y"})
    with pytest.raises(CheckpointError, match="adapter files are loaded on top"):
        load_model(tmp_path / "a.safetensors")


# ---- download ---------------------------------------------------------------------------------------
@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 for the download tests."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMEDSAM_CACHE_DIR", str(folder))
    return folder


def test_download_good_file_then_reuse_offline(sam_checkpoint, http_server, cache, monkeypatch):
    path, sam = sam_checkpoint
    root, url = http_server
    (root / "tiny.pth").write_bytes(path.read_bytes())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(REGISTRY, "served_tiny", ModelSpec("served_tiny", "test", "tiny", "tiny.pth",
                                                           url=f"{url}/tiny.pth", known_hash=f"sha256:{sha}"))
    loaded = load_model("served_tiny", progress=False)
    assert (cache / "tiny.pth").read_bytes() == path.read_bytes()
    key = "image_encoder.pos_embed"
    assert torch.equal(loaded.network.state_dict()[key], sam.state_dict()[key])
    (root / "tiny.pth").unlink()  # server gone: the verified cached copy is used, no network needed
    assert load_model("served_tiny", progress=False).weights_sha256 == sha


def test_truncated_download_is_discarded(sam_checkpoint, http_server, cache):
    path, _ = sam_checkpoint
    root, url = http_server
    (root / "tiny.pth").write_bytes(path.read_bytes()[:1000])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CheckpointError, match="failed its checksum and was discarded"):
        download_checkpoint(f"{url}/tiny.pth", f"sha256:{sha}", "tiny.pth", progress=False)
    assert not any(cache.iterdir())  # nothing partial left behind


def test_wrong_hash_is_refused_and_corrupt_cache_is_replaced(sam_checkpoint, http_server, cache):
    path, _ = sam_checkpoint
    root, url = http_server
    (root / "tiny.pth").write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match="checksum"):
        download_checkpoint(f"{url}/tiny.pth", "sha256:" + "0" * 64, "tiny.pth", progress=False)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    cache.mkdir(exist_ok=True)
    (cache / "tiny.pth").write_bytes(b"corrupt leftovers")
    fetched = download_checkpoint(f"{url}/tiny.pth", f"sha256:{sha}", "tiny.pth", progress=False)
    assert fetched.read_bytes() == path.read_bytes()


def test_unreachable_server_says_what_to_do(cache):
    with pytest.raises(CheckpointError, match="Offline\\? Put the file at"):
        download_checkpoint("http://127.0.0.1:9/none.pth", None, "none.pth", progress=False)


def test_registry_carries_official_urls_and_hashes():
    sam = REGISTRY["sam_vit_b"]
    assert sam.url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert sam.known_hash == "sha256:ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert REGISTRY["medsam_vit_b"].known_hash.startswith("md5:")
    assert registry.cache_dir().name  # resolvable without network


def test_with_uncertainty_is_a_new_handle_over_the_same_weights():
    import warnings

    import numpy as np

    from napari_imedsam.inference.predictor import Predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model("tiny")
    epistemic = loaded.with_uncertainty("epistemic")
    assert loaded.network.config.decoder.uncertainty == "predictive"
    assert epistemic.network.config.decoder.uncertainty == "epistemic"
    assert epistemic.network.coarse_inr.head.weight is loaded.network.coarse_inr.head.weight  # shared, not copied
    image = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    a = Predictor(loaded).predict(image, [8, 8, 30, 30])
    b = Predictor(epistemic).predict(image, [8, 8, 30, 30])
    np.testing.assert_array_equal(a.coarse_prob, b.coarse_prob)
    assert not np.allclose(a.uncertainty, b.uncertainty)
    with pytest.raises(ValueError, match="unknown uncertainty kind"):
        loaded.with_uncertainty("aleatoric")
