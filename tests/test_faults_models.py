"""Fault injection, part 4: crafted model files. Headers and tensors are checked before anything is
built; pickles are refused in one line; adapters load only on the base they were trained on."""

from __future__ import annotations

import json
import os
import time
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from napari_imedsam.model.registry import load_model
from napari_imedsam.model.weights import CheckpointError, save_adapters

from .faults import DataLost, Unclear, check_one_error, expect_error, python, run_cli

LIMITED_INFO = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a guard for the code under test, not part of it
from napari_imedsam.cli import main
sys.exit(main(["info", "--model", sys.argv[1]]))
"""


def _crafted(tmp_path, model_file, edit) -> str:
    """A copy of the tiny model file whose JSON header `edit` has changed."""
    with safe_open(str(model_file), framework="pt") as handle:
        header = json.loads(handle.metadata()["imedsam"])
    edit(header)
    path = tmp_path / "crafted.safetensors"
    save_file(load_file(str(model_file)), str(path), metadata={"imedsam": json.dumps(header)})
    return str(path)


def _set(section: str, key: str, value):
    def edit(header: dict) -> None:
        target = header if section == "" else header["config"][section]
        target[key] = value

    return edit


HEADERS = {  # name: (edit, words the message must contain)
    "inference is a number": (_set("", "inference", 5), ["inference"]),
    "patch_size 0": (_set("encoder", "patch_size", 0), ["patch_size"]),
    "num_heads 0": (_set("encoder", "num_heads", 0), ["num_heads"]),
    "mc_passes 0": (_set("decoder", "mc_passes", 0), ["mc_passes"]),
    "depth is text": (_set("encoder", "depth", "4"), ["depth"]),
    "config is a list": (_set("", "config", [1, 2]), ["config"]),
    "fine_image_patch huge": (_set("decoder", "fine_image_patch", 1_000_001), ["fine_image_patch"]),
    "fine_image_patch even": (_set("decoder", "fine_image_patch", 4), ["fine_image_patch", "odd"]),
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_crafted_headers_give_one_clear_error(tmp_path, capsys, tiny_model_file, case):
    edit, mentions = HEADERS[case]
    path = _crafted(tmp_path, tiny_model_file, edit)
    expect_error(capsys, ["info", "--model", path], [path, *mentions])


def test_a_header_asking_for_a_huge_encoder_is_refused_before_allocating(tmp_path, tiny_model_file):
    path = _crafted(tmp_path, tiny_model_file, _set("encoder", "embed_dim", 196608))  # ~464 GB of weights
    start = time.perf_counter()
    proc = python(LIMITED_INFO, path)
    _, err = proc.communicate(timeout=300)
    check_one_error(proc.returncode, err, [path, "embed_dim"])
    assert time.perf_counter() - start < 60


def _pth(tmp_path, state) -> str:
    path = tmp_path / "crafted.pth"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("state", ["0-dim patch_embed", "no blocks"])
def test_crafted_sam_checkpoints_give_one_clear_error(tmp_path, capsys, state):
    tensors = {"image_encoder.patch_embed.proj.weight": torch.tensor(1.0) if state.startswith("0-dim")
               else torch.zeros(96, 3, 16, 16)}
    path = _pth(tmp_path, tensors)
    expect_error(capsys, ["info", "--model", path], [path])


class _Payload:
    def __init__(self, call, args) -> None:
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("kind", ["os.system", "exec", "eval"])
def test_malicious_pickles_are_refused_in_one_line(tmp_path, capsys, kind):
    marker = tmp_path / "pwned"
    command = f"open({str(marker)!r}, 'w').write('x')"
    payload = {"os.system": _Payload(os.system, (f"touch {marker}",)), "exec": _Payload(exec, (command,)),
               "eval": _Payload(eval, (command,))}[kind]
    path = _pth(tmp_path, {"model": payload})
    marker.unlink(missing_ok=True)
    code, err, _ = run_cli(capsys, ["info", "--model", path])
    if marker.exists():
        raise DataLost("the checkpoint ran code")
    check_one_error(code, err, [path, "refused"])


def test_adapters_of_one_untrained_base_do_not_load_on_another(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1)
        first = load_model("tiny")
        path = save_adapters(first.network, tmp_path / "v001.safetensors",
                             {"base_model": "tiny", "base_sha256": first.weights_sha256})
        torch.manual_seed(2)  # another process, another day: the global random state differs
        second = load_model("tiny")
        same = all(torch.equal(a, b) for a, b in zip(first.network.state_dict().values(),
                                                     second.network.state_dict().values()))
        try:
            load_model("tiny", adapters=path)
            loaded = True
        except CheckpointError:
            loaded = False
        if loaded and not same:
            raise DataLost("adapters trained on one random 'tiny' loaded on a different random 'tiny'")
        try:
            load_model("tiny", adapters=path, seed=1)  # an explicitly different untrained base
        except TypeError:
            raise Unclear("an untrained base has no seed, so no identity of its own") from None
        except CheckpointError as exc:
            assert "trained on base" in str(exc)
            return
    raise DataLost("adapters loaded on an untrained base of another seed")
