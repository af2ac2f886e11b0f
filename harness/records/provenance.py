"""Provenance of a run: hardware, library versions and the project's git commit.

Collected once per process and stored in every result record, so a number in a
report can always be traced to the code and machine that produced it.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import harness
from harness.config.paths import PROJECT_ROOT
from harness.config.vocabulary import VERSIONED_PACKAGES
from harness.huge_pages import huge_pages_state

_GIT_TIMEOUT_S = 10
# Environment variables that choose which CPU kernels run (and so the last bits of every
# float result); medxfer calibrate sets some of them to sample other machines' kernels.
KERNEL_ENV = (
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "OPENBLAS_CORETYPE",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "OMP_NUM_THREADS",
    "MEDXFER_TORCH_THREADS",
)


def collect_provenance() -> dict[str, Any]:
    """Return the provenance of this process (computed once, then cached).

    Returns:
        ``{"hardware": {...}, "versions": {...}, "git": {"commit": str | None,
        "dirty": bool | None}}``. A fresh deep copy each call, so callers may
        modify it freely.
    """
    return copy.deepcopy(_collect())


@functools.cache
def _collect() -> dict[str, Any]:
    return {"hardware": _hardware(), "versions": _versions(), "git": git_state(PROJECT_ROOT)}


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "kernel_env": {name: os.environ[name] for name in KERNEL_ENV if name in os.environ},
        "huge_pages": huge_pages_state(),
        "memory_bytes": _total_memory(),
        "torch_threads": None,
        "cuda_available": False,
        "cuda_device": None,
        "cuda_memory_bytes": None,
    }
    try:
        import torch
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    try:
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        info["cpu_capability"] = None
    try:
        if torch.cuda.is_available():
            info["cuda_available"] = True
            info["cuda_device"] = torch.cuda.get_device_name(0)
            info["cuda_memory_bytes"] = int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # a broken driver must not stop a run from recording its results
        info["cuda_available"] = False
    return info


def _cpu_model() -> str | None:
    """The CPU's model name (``platform.processor()`` is often empty or just the ISA)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _total_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "medxfer": harness.__version__,
    }
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        import torch

        versions["cuda"] = torch.version.cuda
    except ImportError:
        versions["cuda"] = None
    return versions


def git_state(root: Path) -> dict[str, Any]:
    """Return the git commit of the checkout at ``root`` and whether it has local changes.

    Args:
        root: the project root; it must be the top level of a git work tree (an
            installed copy inside some other repository does not count).

    Returns:
        ``{"commit": <sha> | None, "dirty": bool | None}``; both None when ``root``
        is not a git checkout or git is not installed.
    """
    unknown: dict[str, Any] = {"commit": None, "dirty": None}
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():
        return unknown
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return unknown
    status = _git(root, "status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _git(root: Path, *args: str) -> str | None:
    """Run a read-only git command in ``root``; its output, or None when it fails.

    ``git status`` refreshes the index and, to do so, takes ``.git/index.lock``: a run
    killed meanwhile would leave the lock behind and the user's next ``git add`` would
    fail. ``--no-optional-locks`` (and ``GIT_OPTIONAL_LOCKS=0`` for any git it spawns)
    makes git touch nothing in the user's repository.
    """
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=root,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()
