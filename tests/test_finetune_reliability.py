"""Reliability of fine-tuning (issue 16): every model family completes and resumes, every
kill point is safe, one session per training, live checkpoints are kept, and a stored
result is trusted only when it is whole and carries its full key."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from harness.cache import runs as runs_module
from harness.cache import store as store_module
from harness.cache.locks import this_host
from harness.cache.runs import RESULTS, RunStore, TrainingLocked
from harness.cache.store import Entry
from harness.config.cards import ModelCard, Preprocessing, WeightsSpec, get_model_card
from harness.data.npz import SplitData
from harness.protocols.base import TaskInfo
from harness.protocols.finetune import FinetuneConfig, driver, run
from harness.protocols.finetune.network import Classifier
from harness.protocols.finetune.spec import StepInfo
from harness.zoo import LoadedModel, build_model
from harness.zoo.build import _TorchvisionBackbone

SIZE = 16
PRE = Preprocessing(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", crop_pct=1.0)
BINARY = TaskInfo("binary", 2, "roc_auc", ("accuracy", "roc_auc"))
# Small and single-threaded: fast, and bitwise reproducible within the process.
TINY = FinetuneConfig(
    steps=12, batch_size=8, lr=0.05, val_every=4, patience=None, input_size=SIZE, cpu_threads=1
)
REPO = Path(__file__).resolve().parents[1]


class Interrupt(Exception):
    """Stands for a kill: raised from inside a run."""


class TinyNet(nn.Module):
    """Conv-BN-ReLU and global average pooling: 8 pooled features."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def _tiny() -> LoadedModel:
    torch.manual_seed(0)
    card: Any = None  # the protocol never reads the card
    return LoadedModel(card=card, module=TinyNet().eval(), feature_dim=8, weights_id="tiny")


def _split(n: int, seed: int, size: int = SIZE) -> SplitData:
    """Grey noise; label 1 images carry a brighter square."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int64)
    images = rng.integers(0, 120, size=(n, size, size)).astype(np.int64)
    side = size // 3
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, size - side, size=2)
        images[i, r : r + side, c : c + side] += 90
    return SplitData(np.clip(images, 0, 255).astype(np.uint8), labels)


def _splits(size: int = SIZE, n: int = 32, n_eval: int = 16) -> dict[str, SplitData]:
    return {
        "train": _split(n, 0, size),
        "val": _split(n_eval, 1, size),
        "test": _split(n_eval, 2, size),
    }


def _stop_at(step: int):
    def callback(info: StepInfo) -> None:
        if info.step == step:
            raise Interrupt

    return callback


def _case(folder: Path, **kwargs: Any) -> RunStore:
    return RunStore(folder, {"case_id": "finetune/demo/tiny"}, **kwargs)


def _results(folder: Path) -> list[Path]:
    return sorted(folder.glob("ft-*.completed.json"))


def _working(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("ft-*") if p.is_dir())


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference() -> Any:
    """The uninterrupted TinyNet case, without a store."""
    return run(_tiny(), _splits(), BINARY, TINY, PRE, progress=False)


# ----------------------------------------------------------------- 1. torchvision backbones


def test_a_classifier_around_a_torchvision_backbone_restores_its_own_state() -> None:
    torch.set_num_threads(1)
    # The probe's crash: the wrapper saved without its inner "model." prefix but loaded with it.
    backbone = _TorchvisionBackbone(torchvision.models.mobilenet_v3_small(weights=None))
    model = Classifier(backbone, backbone.num_features, 2)
    state = model.state_dict()
    assert "backbone.features.0.0.weight" in state and "head.weight" in state
    assert not any(key.startswith("backbone.model.") for key in state)
    other = Classifier(
        _TorchvisionBackbone(torchvision.models.mobilenet_v3_small(weights=None)),
        backbone.num_features,
        2,
    )
    other.load_state_dict(state)  # strict
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    other.eval()
    assert torch.equal(model(x), other(x))
    # the classifier computes what the wrapper computes
    assert torch.equal(model.backbone(x), backbone.eval()(x))


def _moco_card(tmp_path: Path) -> tuple[ModelCard, torch.Tensor]:
    """A torchvision resnet18 whose weights come through the ``moco_resnet`` converter, and
    the first convolution's weights it must load."""
    torch.manual_seed(1)
    backbone = torchvision.models.resnet18(weights=None).state_dict()
    backbone["conv1.weight"] = torch.randn_like(backbone["conv1.weight"])
    state = {f"module.encoder_q.{k}": v for k, v in backbone.items() if not k.startswith("fc.")}
    state["module.encoder_q.fc.weight"] = torch.randn(128, 512)
    state["module.encoder_q.fc.bias"] = torch.zeros(128)
    state["module.queue"] = torch.randn(128, 16)
    path = tmp_path / "moco_v1_resnet18.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": state}, path)
    card = ModelCard(
        name="resnet18.moco_test",
        library="torchvision",
        architecture="resnet18",
        weights=WeightsSpec(source="file", path=str(path), converter="moco_resnet"),
        preprocessing=Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        category="self-supervised",
        pretraining_data="test",
        source_file="moco-test-card.yaml",
    )
    return card, backbone["conv1.weight"]


@pytest.mark.parametrize(
    "family",
    ["torchvision:mobilenet_v2.tv_in1k_pip", "timm:tf_efficientnet_lite0.in1k_pip", "converter"],
)
def test_every_model_family_fine_tunes_and_resumes(family: str, tmp_path: Path) -> None:
    if family == "converter":
        card, conv1 = _moco_card(tmp_path)
        model = build_model(card)
        assert torch.equal(model.module.state_dict()["conv1.weight"], conv1)
    else:
        card = get_model_card(family.split(":")[1])
        model = build_model(card)
    # the smoke profile (the smallest), shortened to 4 steps of 4 images at 32 px
    config = dataclasses.replace(
        FinetuneConfig.for_profile("smoke"),
        steps=4,
        val_every=2,
        batch_size=4,
        input_size=32,
        eval_batch_size=8,
    )
    splits = _splits(size=32, n=8, n_eval=8)
    pre = card.preprocessing.with_input_size(32)
    whole = run(model, splits, BINARY, config, pre, _case(tmp_path / "whole"), progress=False)
    assert whole.details["steps_done"] == 4 and whole.details["reused_completed_run"] is False

    folder = tmp_path / "case"
    with pytest.raises(Interrupt):
        run(model, splits, BINARY, config, pre, _case(folder), progress=False, callback=_stop_at(3))
    (working,) = _working(folder)
    assert torch.load(working / "main.pt", map_location="cpu", weights_only=True)["step"] == 2
    resumed = run(model, splits, BINARY, config, pre, _case(folder), progress=False)
    assert resumed.details["resumed_from_step"] == 2
    assert resumed.details["final_weights_sha256"] == whole.details["final_weights_sha256"]
    assert resumed.metrics == whole.metrics
    assert _working(folder) == [] and len(_results(folder)) == 1
    again = run(model, splits, BINARY, config, pre, _case(folder), progress=False)
    assert again.details["reused_completed_run"] is True and again.metrics == whole.metrics


# ----------------------------------------------------------------- 2a. every kill point is safe


def _kill_in_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    original = driver.score

    def score(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(driver, "score", original)
        raise Interrupt

    monkeypatch.setattr(driver, "score", score)


def _kill_in_result_write(monkeypatch: pytest.MonkeyPatch) -> None:
    original = store_module.write_with

    def write_with(target: Path, writer: Any) -> None:
        if str(target).endswith(".completed.json"):
            monkeypatch.setattr(store_module, "write_with", original)

            def half(handle: Any) -> None:
                writer(handle)
                raise Interrupt  # the temporary is written, the rename never happens

            return original(target, half)
        return original(target, writer)

    monkeypatch.setattr(store_module, "write_with", write_with)


def _kill_before_folder_deletion(monkeypatch: pytest.MonkeyPatch) -> None:
    original = runs_module.shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(runs_module.shutil, "rmtree", original)
        assert _results(Path(path).parent), "the working folder went before the result"
        raise Interrupt

    monkeypatch.setattr(runs_module.shutil, "rmtree", rmtree)


@pytest.mark.parametrize(
    "kill", [_kill_in_scoring, _kill_in_result_write, _kill_before_folder_deletion]
)
def test_a_kill_at_any_point_after_training_never_trains_again(
    kill: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Any
) -> None:
    folder = tmp_path / "case"
    kill(monkeypatch)
    with pytest.raises(Interrupt):
        run(_tiny(), _splits(), BINARY, TINY, PRE, _case(folder), progress=False)
    steps: list[int] = []
    again = run(
        _tiny(),
        _splits(),
        BINARY,
        TINY,
        PRE,
        _case(folder),
        progress=False,
        callback=lambda info: steps.append(info.step),
    )
    assert steps == []  # resumed at the end, or the stored result
    assert again.metrics == reference.metrics
    assert again.details["final_weights_sha256"] == reference.details["final_weights_sha256"]
    assert len(_results(folder)) == 1 and _working(folder) == []


# ----------------------------------------------------------------- 2b. one session per training

_HOLDER = """
import sys, time
from pathlib import Path
from harness.cache.locks import hold
lock, ready, release = (Path(p) for p in sys.argv[1:4])
with hold(lock):
    ready.touch()
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Any]:
    """Starts another process that holds a lock file until released (or 60 s)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(lock: Path) -> tuple[subprocess.Popen[bytes], Path]:
        ready = tmp_path / f"ready-{len(started)}"
        release = tmp_path / f"release-{len(started)}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(lock), str(ready), str(release)], env=env
        )
        started.append(process)
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, "holder did not start"
            time.sleep(0.02)
        return process, release

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _training_key(folder: Path, stop: int = 1) -> str:
    """The training key of the TinyNet case: the folder of a run stopped at ``stop``."""
    with pytest.raises(Interrupt):
        run(_tiny(), _splits(), BINARY, TINY, PRE, _case(folder), callback=_stop_at(stop))
    (working,) = _working(folder)
    return working.name.removeprefix("ft-")


def test_a_second_session_waits_names_the_holder_and_gives_up(
    tmp_path: Path, holder: Any, caplog: pytest.LogCaptureFixture, reference: Any
) -> None:
    folder = tmp_path / "case"
    key = _training_key(folder)
    process, release = holder(folder / f"ft-{key}.lock")
    steps: list[int] = []
    caplog.set_level(logging.WARNING, logger="medxfer.cache")
    with pytest.raises(TrainingLocked) as raised:
        run(
            _tiny(),
            _splits(),
            BINARY,
            TINY,
            PRE,
            _case(folder, lock_timeout=0.3),
            progress=False,
            callback=lambda info: steps.append(info.step),
        )
    message = str(raised.value)
    assert f"pid {process.pid}" in message and this_host() in message and "since" in message
    assert f"fine-tune case {folder.name}" in message
    assert f"ft-{key}.lock" in message and "MEDXFER_LOCK_TIMEOUT" in message
    assert steps == []  # it never trained beside the holder
    assert any(f"pid {process.pid}" in r.getMessage() for r in caplog.records)

    release.touch()  # the holder finishes: the waiter goes on
    done = run(
        _tiny(), _splits(), BINARY, TINY, PRE, _case(folder, lock_timeout=30), progress=False
    )
    assert done.metrics == reference.metrics and done.details["resumed_from_step"] == 0


# ----------------------------------------------------------------- 2c. live checkpoints are kept


def test_another_seed_keeps_a_live_sessions_checkpoints(tmp_path: Path, holder: Any) -> None:
    folder = tmp_path / "case"
    key = _training_key(folder, stop=5)  # seed 0, checkpointed at step 4
    live = folder / f"ft-{key}"
    before = (live / "main.pt").read_bytes()
    _, release = holder(folder / f"ft-{key}.lock")  # seed 0's session is live
    other_seed = dataclasses.replace(TINY, seed=1)
    result = run(_tiny(), _splits(), BINARY, other_seed, PRE, _case(folder), progress=False)
    assert result.details["reused_completed_run"] is False
    assert (live / "main.pt").read_bytes() == before
    release.touch()


def _record_holder(lock: Path, pid: int, host: str) -> None:
    # what harness.cache.locks records in a lock file while held, left by a killed holder
    lock.write_text(json.dumps({"pid": pid, "host": host, "time": time.time(), "argv": "x"}))


def test_stale_trainings_go_unless_live(tmp_path: Path) -> None:
    runs = _case(tmp_path / "case")

    def stale(config: int) -> Path:
        training = runs.open(runs.training_key({"config": config}))
        (training.folder / "main.pt").write_bytes(b"checkpoint")
        return training.folder

    released = stale(1)  # its session released its lock cleanly
    elsewhere = stale(2)  # a holder on another host never released it, written just now
    _record_holder(elsewhere.with_name(elsewhere.name + ".lock"), 4242, "another-host")
    old = stale(3)  # the same, but written long ago
    _record_holder(old.with_name(old.name + ".lock"), 4242, "another-host")
    long_ago = time.time() - 30 * 24 * 3600  # beyond the live window (6 hours)
    for path in (old, old / "main.pt"):
        os.utime(path, (long_ago, long_ago))
    dead = stale(4)  # a holder of this host that was killed
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True
    )
    _record_holder(dead.with_name(dead.name + ".lock"), int(gone.stdout), this_host())

    runs.open(runs.training_key({"config": 5}))
    assert not released.exists() and not old.exists() and not dead.exists()
    assert (elsewhere / "main.pt").read_bytes() == b"checkpoint"


# ----------------------------------------------------------------- 3. stored results


def _rewrite(path: Path, value: Any, key_text: str | None = None) -> None:
    """Rewrite a stored result through the namespace's own codec (a whole, checksummed file)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    entry = Entry(RESULTS.name, "", key_text or document["key"], path)
    with open(path, "wb") as handle:
        RESULTS.codec.write(handle, value, entry)


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff not json")


def _truncated(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8")[:40], encoding="utf-8")


def _empty(path: Path) -> None:
    path.write_text("", encoding="utf-8")


def _no_metrics(path: Path) -> None:
    value = json.loads(path.read_text(encoding="utf-8"))["value"]
    _rewrite(path, {**value, "metrics": None})


def _not_a_mapping(path: Path) -> None:
    _rewrite(path, [1, 2, 3])


def _another_key(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    text = document["key"].replace('"seed": 0', '"seed": 7')
    assert text != document["key"]
    _rewrite(path, document["value"], key_text=text)


@pytest.mark.parametrize(
    "damage", [_garbage, _truncated, _empty, _no_metrics, _not_a_mapping, _another_key]
)
def test_a_damaged_or_foreign_result_is_a_logged_miss(
    damage: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, reference: Any
) -> None:
    folder = tmp_path / "case"
    run(_tiny(), _splits(), BINARY, TINY, PRE, _case(folder), progress=False)
    (stored,) = _results(folder)
    damage(stored)
    caplog.set_level(logging.WARNING, logger="medxfer.cache")
    again = run(_tiny(), _splits(), BINARY, TINY, PRE, _case(folder), progress=False)
    assert again.details["reused_completed_run"] is False  # recomputed, not trusted
    assert again.metrics == reference.metrics
    assert any(str(stored) in r.getMessage() for r in caplog.records)
    third = run(_tiny(), _splits(), BINARY, TINY, PRE, _case(folder), progress=False)
    assert third.details["reused_completed_run"] is True  # the file was replaced


def test_a_stored_result_carries_its_full_key(tmp_path: Path) -> None:
    folder = tmp_path / "case"
    run(_tiny(), _splits(), BINARY, TINY, PRE, _case(folder), progress=False)
    (stored,) = _results(folder)
    key = json.loads(stored.read_text(encoding="utf-8"))["key"]
    payload = json.loads(key)
    assert payload["scope"] == {"case_id": "finetune/demo/tiny"}
    training = payload["training"]
    assert training["config"] == json.loads(json.dumps(TINY.to_dict()))
    assert training["weights_id"] == "tiny" and training["task"]["task"] == "binary"
    assert set(payload["scoring"]) == {"test", "libraries"}
