"""Shared fixtures of the harness's own tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

# the fault-injection suite's summary line (tests/test_faults.py), also on an xdist controller
from fault_report import (  # noqa: F401
    pytest_configure,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_unconfigure,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection: tests never download."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: small forwards gain nothing from threads, and lose a
    lot on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh ``MEDXFER_HOME`` and one torch thread for a test (tiny training runs)."""
    import torch

    monkeypatch.setenv("MEDXFER_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
