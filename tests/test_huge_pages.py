"""Transparent huge pages for large CPU tensors: requested by default, the user's choice kept,
recorded, and without effect on the numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import huge_pages
from harness.huge_pages import HUGE_PAGES_ENV, huge_pages_state, request_huge_pages
from harness.records.provenance import _hardware


def test_requested_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    assert request_huge_pages() == "1" and os.environ[HUGE_PAGES_ENV] == "1"
    monkeypatch.setenv(HUGE_PAGES_ENV, "0")
    assert request_huge_pages() == "0" and os.environ[HUGE_PAGES_ENV] == "0"


@pytest.mark.parametrize(
    ("text", "mode"),
    [("always [madvise] never\n", "madvise"), ("[always] madvise never\n", "always"), ("", None)],
)
def test_state_names_the_request_and_the_kernel_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, mode: str | None
) -> None:
    setting = tmp_path / "enabled"
    setting.write_text(text)
    monkeypatch.setattr(huge_pages, "KERNEL_SETTING", setting)
    monkeypatch.setenv(HUGE_PAGES_ENV, "1")
    assert huge_pages_state() == {HUGE_PAGES_ENV: "1", "kernel": mode}
    monkeypatch.setattr(huge_pages, "KERNEL_SETTING", tmp_path / "missing")
    monkeypatch.delenv(HUGE_PAGES_ENV)
    assert huge_pages_state() == {HUGE_PAGES_ENV: None, "kernel": None}
    assert _hardware()["huge_pages"] == {HUGE_PAGES_ENV: None, "kernel": None}


_FORWARD = """
import hashlib, sys, torch, timm
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
model = model.to(memory_format=torch.channels_last)
x = torch.randn(16, 3, 96, 96).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    out = model(x)
huge = sum(int(line.split()[1]) for line in open("/proc/self/smaps") if line.startswith("AnonHugePages:"))
print(hashlib.sha256(out.numpy().tobytes()).hexdigest(), huge)
"""


@pytest.mark.slow
@pytest.mark.skipif(
    huge_pages_state()["kernel"] != "madvise",
    reason="needs transparent_hugepage/enabled = madvise (only asked-for regions get huge pages)",
)
def test_features_are_the_same_bits_with_and_without_huge_pages() -> None:
    """Huge pages change where c10 puts a tensor, never what the forward computes."""
    digests, huge_kib = {}, {}
    for setting in ("0", "1"):
        for threads in ("1", "2"):
            out = subprocess.run(
                [sys.executable, "-c", _FORWARD, threads],
                env={**os.environ, HUGE_PAGES_ENV: setting},
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            ).stdout.split()
            digests[setting, threads], huge_kib[setting, threads] = out[0], int(out[1])
    # the setting took effect: only the processes that asked hold huge pages
    assert huge_kib["0", "1"] == huge_kib["0", "2"] == 0
    assert huge_kib["1", "1"] > 0 and huge_kib["1", "2"] > 0
    assert len(set(digests.values())) == 1, digests
