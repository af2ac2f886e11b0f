"""``medxfer convert``: BYOL's Haiku pickle and SimCLR's TensorFlow checkpoints.

The TensorFlow reader is checked against small checkpoints written by TensorFlow itself
(``tests/data/make_tf_checkpoint.py``; TensorFlow's own reader gave ``expected.npz``) and
against a full ResNet-50 bundle written here byte by byte from the format (SSTable
blocks with restart points, masked crc32c, ``BundleEntryProto``). The BYOL pickle is
written with ``pickle.dump`` of the nested numpy layout of DeepMind's checkpoint. Both
come from a randomly initialised torchvision ResNet-50; after ``medxfer convert`` the
committed card loads strictly and gives that network's features.
"""

from __future__ import annotations

import functools
import os
import pickle
import struct
import sys
import types
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from harness.cli import main
from harness.config.card_fields import CardError
from harness.config.cards import get_model_card
from harness.config.model_cards import load_model_card_file
from harness.zoo import build_model, weights_identity
from harness.zoo.converters import get_converter
from harness.zoo.errors import CheckpointError, WeightsUnavailable
from harness.zoo.haiku_pickle import load_restricted_pickle
from harness.zoo.sources import converted_path, ensure_weights
from harness.zoo.tf_checkpoint import crc32c, mask_crc, read_index, read_tf_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data" / "tf_checkpoint"
IMAGE = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
BLOCKS = (3, 4, 6, 3)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDXFER_OFFLINE", "1")
    return tmp_path / "home"


@functools.cache
def network() -> nn.Module:
    """A torchvision ResNet-50 with every tensor moved off its initial value."""
    model = torchvision.models.resnet50(weights=None)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            noise = torch.rand(value.shape, generator=generator)
            if key.endswith("num_batches_tracked"):
                continue
            if key.endswith("running_var") or (key.endswith(".weight") and value.ndim == 1):
                value.copy_(0.5 + noise)
            elif key.endswith("running_mean") or key.endswith("bias"):
                value.copy_(0.2 * (noise - 0.5))
            else:
                value.mul_(0.75 + 0.5 * noise)
    model.fc = nn.Identity()
    return model.eval()


def numpy_of(key: str) -> np.ndarray:
    return network().state_dict()[key].numpy().copy()


def hwio(key: str) -> np.ndarray:
    return np.ascontiguousarray(numpy_of(key).transpose(2, 3, 1, 0))


def units_in_tf_order() -> list[tuple[str, str]]:
    """(conv, bn) torchvision prefixes in the order SimCLR's TF1 resnet.py creates them."""
    order = [("conv1", "bn1")]
    for group, blocks in enumerate(BLOCKS, start=1):
        for block in range(blocks):
            base = f"layer{group}.{block}"
            if block == 0:
                order.append((f"{base}.downsample.0", f"{base}.downsample.1"))
            order += [(f"{base}.conv{k}", f"{base}.bn{k}") for k in (1, 2, 3)]
    return order


def features(module: nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return module(IMAGE)


def assert_card_gives_network_features(name: str) -> None:
    loaded = build_model(get_model_card(name))
    state = loaded.module.state_dict()
    for key, value in network().state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(state[key], value), key
    got, wanted = features(loaded.module), features(network())
    torch.testing.assert_close(got, wanted, rtol=1e-5, atol=1e-5 * float(wanted.abs().max()))


# --------------------------------------------------------------------------- TF reader


def test_reader_matches_tensorflow_on_real_checkpoints() -> None:
    expected = np.load(DATA / "expected.npz")
    for tag, path in (("tf1", DATA / "tf1" / "model.ckpt-7"), ("tf2", DATA / "tf2/ckpt-1.index")):
        checkpoint = read_tf_checkpoint(path)
        wanted = {k.split(":", 1)[1]: expected[k] for k in expected.files if k.startswith(tag)}
        assert sorted(checkpoint.tensors) == sorted(wanted)
        for name, value in wanted.items():
            got = checkpoint.tensors[name]
            assert got.shape == value.shape and np.array_equal(got, value), name
            if name != "brain/bfloat":
                assert got.dtype == value.dtype, name
    tf1 = read_tf_checkpoint(DATA / "tf1" / "model.ckpt-7")
    assert tf1.tensors["global_step"].dtype == np.int64 and int(tf1.tensors["global_step"]) == 7
    assert tf1.tensors["base_model/conv2d/kernel"].shape == (3, 3, 2, 4)
    assert tf1.tensors["empty/tensor"].shape == (0, 3)
    assert read_tf_checkpoint(DATA / "tf2" / "ckpt-1").skipped == ("_CHECKPOINTABLE_OBJECT_GRAPH",)


def test_real_index_is_prefix_compressed_with_restart_points() -> None:
    """TensorFlow's index is one data block here: many restarts, shared key prefixes."""
    path = DATA / "tf1" / "model.ckpt-7.index"
    data = path.read_bytes()
    footer = data[-48:]
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    offset, size = read_first_handle(data[index_offset : index_offset + index_size])
    block = data[offset : offset + size]
    (restarts,) = struct.unpack("<I", block[-4:])
    assert restarts >= 16
    entries = read_index(path)
    assert len(entries) == 316 + 1  # the variables (global_step included) and the header
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def copy_checkpoint(tmp_path: Path) -> Path:
    for file in (DATA / "tf1").iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    return tmp_path / "model.ckpt-7"


def test_crc32c_is_castagnolis_and_masked_as_leveldb_masks_it() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    assert mask_crc(0) == 0xA282EAD8 and mask_crc(0x8000) == 0xA282EAD9


def test_reader_refuses_corrupt_data_and_compressed_blocks(tmp_path: Path) -> None:
    prefix = copy_checkpoint(tmp_path)
    data = tmp_path / "model.ckpt-7.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[5] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="crc32c of its bytes does not match"):
        read_tf_checkpoint(prefix)
    data.unlink()
    with pytest.raises(
        CheckpointError, match=r"data file model\.ckpt-7\.data-00000-of-00001 is missing"
    ):
        read_tf_checkpoint(prefix)
    # mark the first data block snappy-compressed, with a valid trailer checksum
    index = tmp_path / "model.ckpt-7.index"
    raw = bytearray(index.read_bytes())
    footer = bytes(raw[-48:])
    _, pos = _varint(footer, 0)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    first = read_first_handle(bytes(raw[index_offset : index_offset + index_size]))
    end = first[0] + first[1]
    raw[end] = 1
    raw[end + 1 : end + 5] = struct.pack("<I", mask_crc(crc32c(bytes(raw[first[0] : end + 1]))))
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="snappy-compressed"):
        read_index(index)
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint index"):
        read_tf_checkpoint(tmp_path / "model.ckpt-8")


def read_first_handle(block: bytes) -> tuple[int, int]:
    _, pos = _varint(block, 0)
    unshared, pos = _varint(block, pos)
    _, pos = _varint(block, pos)
    pos += unshared
    offset, pos = _varint(block, pos)
    size, _ = _varint(block, pos)
    return offset, size


# --------------------------------------------------------------------------- TF bundle writer


def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    tag = _enc_varint(number << 3 | wire)
    if wire == 0:
        return tag + _enc_varint(int(payload))
    if wire == 5:
        return tag + struct.pack("<I", int(payload))
    assert isinstance(payload, bytes)
    return tag + _enc_varint(len(payload)) + payload


def _block(entries: list[tuple[bytes, bytes]], interval: int = 16) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += _enc_varint(shared) + _enc_varint(len(key) - shared) + _enc_varint(len(value))
        out += key[shared:] + value
        previous = key
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray], per_block: int = 40) -> None:
    """A TF tensor bundle from the format: float32 tensors, uncompressed SSTable index."""
    data = bytearray()
    values = {b"": _field(1, 0, 1) + _field(3, 2, _field(1, 0, 1))}  # header: 1 shard
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        shape = b"".join(_field(2, 2, _field(1, 0, d)) for d in array.shape)
        entry = _field(1, 0, 1) + _field(2, 2, shape) + _field(4, 0, len(data))
        entry += _field(5, 0, len(raw)) + _field(6, 5, mask_crc(crc32c(raw)))
        values[name.encode()] = entry
        data += raw
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
    table, index_entries = bytearray(), []
    items = sorted(values.items())

    def add(block: bytes) -> bytes:
        handle = _enc_varint(len(table)) + _enc_varint(len(block))
        trailer = bytes([0])
        table.extend(block + trailer + struct.pack("<I", mask_crc(crc32c(block + trailer))))
        return handle

    for start in range(0, len(items), per_block):
        chunk = items[start : start + per_block]
        index_entries.append((chunk[-1][0], add(_block(chunk))))
    meta = add(_block([]))
    index = add(_block(index_entries, interval=1))
    footer = (meta + index).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(bytes(table) + footer)


def simclr_variables(extra: bool = True) -> dict[str, np.ndarray]:
    """The TF1 ``base_model/`` variables of SimCLR's resnet.py holding ``network()``."""
    out: dict[str, np.ndarray] = {}
    for number, (conv, bn) in enumerate(units_in_tf_order()):
        suffix = f"_{number}" if number else ""
        out[f"base_model/conv2d{suffix}/kernel"] = hwio(f"{conv}.weight")
        if extra:
            out[f"base_model/conv2d{suffix}/kernel/Momentum"] = np.zeros(1, np.float32)
        for tf_name, torch_name in (
            ("gamma", "weight"),
            ("beta", "bias"),
            ("moving_mean", "running_mean"),
            ("moving_variance", "running_var"),
        ):
            out[f"base_model/batch_normalization{suffix}/{tf_name}"] = numpy_of(
                f"{bn}.{torch_name}"
            )
    if extra:
        out["head_supervised/linear_layer/dense/kernel"] = np.ones((8, 3), np.float32)
        out["head_contrastive/nl_0/dense/kernel"] = np.ones((8, 8), np.float32)
        out["global_step"] = np.array(225206, dtype=np.float32)
    return out


@pytest.mark.parametrize("name", ["resnet50.simclr_v1", "resnet50.simclr_v2"])
def test_simclr_checkpoint_converts_and_loads(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(WeightsUnavailable, match=rf"medxfer convert {name} --from"):
        ensure_weights(get_model_card(name))
    folder = tmp_path / "download"
    folder.mkdir()
    write_bundle(folder / "model.ckpt-250228", simclr_variables())
    assert main(["convert", name, "--from", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "reading TensorFlow checkpoint" in out and "fit resnet50 strictly" in out
    assert converted_path(get_model_card(name)).is_file()
    assert_card_gives_network_features(name)


def test_simclr_checkpoint_in_a_zip_then_refusals(tmp_path: Path) -> None:
    import zipfile

    write_bundle(tmp_path / "model.ckpt-225206", simclr_variables(extra=False))
    archive = tmp_path / "ResNet50_1x.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for file in tmp_path.glob("model.ckpt-225206.*"):
            out.write(file, f"ResNet50_1x/{file.name}")
    assert main(["convert", "resnet50.simclr_v1", "--from", str(archive)]) == 0
    assert_card_gives_network_features("resnet50.simclr_v1")
    card = get_model_card("resnet50.simclr_v1")
    from harness.zoo.convert import convert

    with pytest.raises(CheckpointError, match="already converted"):
        convert(card, archive, say=lambda _: None)
    variables = {k: torch.from_numpy(v) for k, v in simclr_variables(extra=False).items()}
    del variables["base_model/batch_normalization_7/moving_mean"]
    with pytest.raises(ValueError, match="batch_normalization_7 lacks running_mean"):
        get_converter("simclr_tf_resnet").fn(variables, network().state_dict())


# --------------------------------------------------------------------------- BYOL


HAIKU = "res_net50/~/"


def haiku_trees() -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """``online_params`` / ``online_state`` of BYOL's ResNetTorso holding ``network()``."""
    params: dict[str, dict[str, np.ndarray]] = {}
    state: dict[str, dict[str, np.ndarray]] = {}

    def unit(haiku_conv: str, haiku_bn: str, conv: str, bn: str) -> None:
        params[HAIKU + haiku_conv] = {"w": hwio(f"{conv}.weight")}
        params[HAIKU + haiku_bn] = {
            "scale": numpy_of(f"{bn}.weight").reshape(1, 1, 1, -1),
            "offset": numpy_of(f"{bn}.bias").reshape(1, 1, 1, -1),
        }
        for ema, key in (("mean_ema", "running_mean"), ("var_ema", "running_var")):
            state[f"{HAIKU}{haiku_bn}/~/{ema}"] = {
                "average": numpy_of(f"{bn}.{key}").reshape(1, 1, 1, -1),
                "counter": np.array(1000, np.int32),
                "hidden": numpy_of(f"{bn}.{key}").reshape(1, 1, 1, -1),
            }

    unit("initial_conv", "initial_batchnorm", "conv1", "bn1")
    for group, blocks in enumerate(BLOCKS):
        for block in range(blocks):
            prefix = f"block_group_{group}/~/block_{block}/~/"
            base = f"layer{group + 1}.{block}"
            for k in range(3):
                unit(
                    f"{prefix}conv_{k}",
                    f"{prefix}batchnorm_{k}",
                    f"{base}.conv{k + 1}",
                    f"{base}.bn{k + 1}",
                )
            if block == 0:
                unit(
                    f"{prefix}shortcut_conv",
                    f"{prefix}shortcut_batchnorm",
                    f"{base}.downsample.0",
                    f"{base}.downsample.1",
                )
    params["projector/~/linear"] = {
        "w": np.ones((2048, 4096), np.float32),
        "b": np.zeros(4096, np.float32),
    }
    params["predictor/~/linear"] = {
        "w": np.ones((256, 4096), np.float32),
        "b": np.zeros(4096, np.float32),
    }
    state["projector/~/batch_norm/~/mean_ema"] = {"average": np.zeros((1, 4096), np.float32)}
    return params, state


class _ByolExperimentState(NamedTuple):
    online_params: Any
    target_params: Any
    online_state: Any
    target_state: Any
    opt_state: Any


def write_byol_pickle(path: Path) -> None:
    """DeepMind's layout: a dict with ``experiment_state`` (byol's named tuple), ``step``, ``rng``.

    The named tuple is pickled by reference as ``byol.byol_experiment._ByolExperimentState``
    and removed from ``sys.modules`` before loading: conversion must not import it.
    """
    module = types.ModuleType("byol.byol_experiment")
    _ByolExperimentState.__module__ = "byol.byol_experiment"
    module._ByolExperimentState = _ByolExperimentState  # type: ignore[attr-defined]
    params, state = haiku_trees()
    checkpoint = {
        "experiment_state": _ByolExperimentState(params, params, state, state, ()),
        "step": np.int64(300000),
        "rng": np.array([0, 42], np.uint32),
    }
    sys.modules.update({"byol": types.ModuleType("byol"), "byol.byol_experiment": module})
    try:
        with open(path, "wb") as handle:
            pickle.dump(checkpoint, handle, protocol=2)
    finally:
        del sys.modules["byol"], sys.modules["byol.byol_experiment"]


def test_byol_pickle_converts_and_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(WeightsUnavailable, match=r"medxfer convert resnet50\.byol --from"):
        ensure_weights(get_model_card("resnet50.byol"))
    source = tmp_path / "pretrain_res50x1.pkl"
    write_byol_pickle(source)
    assert "byol" not in sys.modules
    assert main(["convert", "resnet50.byol", "--from", str(source)]) == 0
    assert "unpickling" in capsys.readouterr().out
    assert "byol.byol_experiment" not in sys.modules
    card = get_model_card("resnet50.byol")
    assert_card_gives_network_features("resnet50.byol")
    from safetensors import safe_open

    with safe_open(str(converted_path(card)), "pt") as handle:
        meta = handle.metadata()
    assert meta["converter"] == "byol_haiku_resnet" and meta["source_file"] == source.name
    assert len(weights_identity(card)) == 64
    assert main(["convert", "resnet50.byol", "--from", str(source)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["convert", "resnet50.byol", "--from", str(source), "--force"]) == 0


def test_malicious_pickle_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return os.system, (f"touch {marker}",)

    source = tmp_path / "evil.pkl"
    source.write_bytes(pickle.dumps({"experiment_state": {"online_params": Payload()}}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refused global (posix|os|nt)\.system"):
        load_restricted_pickle(source)
    assert main(["convert", "resnet50.byol", "--from", str(source)]) == 2
    assert "refused global" in capsys.readouterr().err
    assert not marker.exists()
    assert not converted_path(get_model_card("resnet50.byol")).exists()
    getattr_payload = b"\x80\x02cbuiltins\ngetattr\nq\x00."
    source.write_bytes(getattr_payload)
    with pytest.raises(CheckpointError, match=r"refused global builtins\.getattr"):
        load_restricted_pickle(source)


def haiku_forward(x: torch.Tensor, same: bool) -> torch.Tensor:
    """BYOL's ResNetTorso forward in torch ops, from the Haiku trees (NCHW).

    ``same`` pads as Haiku's ``padding='SAME'`` (asymmetric for stride 2); otherwise
    symmetric, as torchvision does.
    """
    params, state = haiku_trees()

    def pad(x: torch.Tensor, k: int, stride: int, value: float = 0.0) -> tuple[torch.Tensor, int]:
        if not same:
            return x, k // 2
        size = x.shape[-1]
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        return F.pad(x, (total // 2, total - total // 2) * 2, value=value), 0

    def conv(x: torch.Tensor, name: str, stride: int) -> torch.Tensor:
        w = torch.from_numpy(params[HAIKU + name]["w"]).permute(3, 2, 0, 1)
        x, padding = pad(x, w.shape[-1], stride)
        return F.conv2d(x, w, stride=stride, padding=padding)

    def bn(x: torch.Tensor, name: str) -> torch.Tensor:
        def leaf(tree: dict, key: str, field: str) -> torch.Tensor:
            return torch.from_numpy(tree[key][field]).reshape(1, -1, 1, 1)

        mean = leaf(state, f"{HAIKU}{name}/~/mean_ema", "average")
        var = leaf(state, f"{HAIKU}{name}/~/var_ema", "average")
        scale, offset = leaf(params, HAIKU + name, "scale"), leaf(params, HAIKU + name, "offset")
        return (x - mean) / torch.sqrt(var + 1e-5) * scale + offset

    x = F.relu(bn(conv(x, "initial_conv", 2), "initial_batchnorm"))
    x, padding = pad(x, 3, 2, value=float("-inf"))
    x = F.max_pool2d(x, 3, 2, padding=padding)
    for group, blocks in enumerate(BLOCKS):
        for block in range(blocks):
            name = f"block_group_{group}/~/block_{block}/~/"
            stride = 2 if group and block == 0 else 1
            shortcut = x
            if block == 0:
                shortcut = bn(conv(x, f"{name}shortcut_conv", stride), f"{name}shortcut_batchnorm")
            h = F.relu(bn(conv(x, f"{name}conv_0", 1), f"{name}batchnorm_0"))
            h = F.relu(bn(conv(h, f"{name}conv_1", stride), f"{name}batchnorm_1"))
            h = bn(conv(h, f"{name}conv_2", 1), f"{name}batchnorm_2")
            x = F.relu(h + shortcut)
    return x.mean(dim=(2, 3))


def test_byol_features_equal_a_haiku_forward_and_measure_same_padding(tmp_path: Path) -> None:
    source = tmp_path / "pretrain_res50x1.pkl"
    write_byol_pickle(source)
    assert main(["convert", "resnet50.byol", "--from", str(source)]) == 0
    module = build_model(get_model_card("resnet50.byol")).module
    got = features(module)
    with torch.inference_mode():
        symmetric, same = haiku_forward(IMAGE, same=False), haiku_forward(IMAGE, same=True)
    scale = float(symmetric.abs().max())
    torch.testing.assert_close(got, symmetric, rtol=1e-4, atol=1e-4 * scale)
    # Haiku's SAME padding shifts every stride-2 window by one pixel: not reproduced
    relative = float((same - got).norm() / got.norm())
    assert relative > 1e-3
    cosine = F.cosine_similarity(same, got).min()
    assert cosine > 0.5, f"SAME vs symmetric padding: relative {relative:.3f}, cosine {cosine:.3f}"


# --------------------------------------------------------------------------- cards and converters


def test_converters_are_idempotent_and_name_what_is_missing() -> None:
    target = {k: v for k, v in network().state_dict().items()}
    for name in ("byol_haiku_resnet", "simclr_tf_resnet"):
        fn = get_converter(name).fn
        assert fn(dict(target), target).keys() == target.keys()
    with pytest.raises(ValueError, match="expected one Haiku encoder"):
        get_converter("byol_haiku_resnet").fn({"params/x/w": torch.ones(1)}, target)


def test_format_field_is_validated(tmp_path: Path) -> None:
    def card(**weights: Any) -> Path:
        import yaml

        entry = {
            "name": "resnet50.x",
            "architecture": {"library": "torchvision", "name": "resnet50"},
            "weights": {
                "source": "url",
                "url": "https://e.org/a.pkl",
                "sha256": "unpublished",
                **weights,
            },
            "preprocessing": {"input_size": 224, "mean": [0, 0, 0], "std": [1, 1, 1]},
            "category": "self-supervised",
            "pretraining_data": "x",
        }
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({"models": [entry]}))
        return path

    with pytest.raises(CardError, match="field 'format' is 'onnx'"):
        load_model_card_file(card(format="onnx", converter="byol_haiku_resnet"))
    with pytest.raises(CardError, match="format: 'haiku_pickle' weights are converted"):
        load_model_card_file(card(format="haiku_pickle"))
    (native,) = load_model_card_file(card())
    assert "format" not in native.fingerprint()["weights"]
    (pickled,) = load_model_card_file(card(format="haiku_pickle", converter="byol_haiku_resnet"))
    assert pickled.fingerprint()["weights"]["format"] == "haiku_pickle"


def test_convert_refuses_a_native_card(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["convert", "resnet50.moco_v2", "--from", str(tmp_path)]) == 2
    assert "nothing to convert" in capsys.readouterr().err
