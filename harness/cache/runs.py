"""The training store: one case's resumable checkpoints and finished results.

A protocol that trains (fine-tuning) describes what its training depends on; the store
turns that into keys. In a case's folder (``<MEDXFER_HOME>/checkpoints/<case>/``):

* ``ft-<result key>.completed.json``: the finished result (metrics and details, not the
  weights) of a training plus its scoring. Run again under the same key, the case
  returns it instead of training (:meth:`RunStore.result`).
* ``ft-<training key>/``: the working folder of an unfinished training: one checkpoint
  per run (``<run>.pt``, bound to the run's key, resumed exactly) and one done-marker
  per finished sweep run (``<run>.done.json``). Opening a training deletes the other
  ``ft-*`` folders (the folder belongs to one case; another key is a stale
  configuration), and a stored result deletes its working folder.

Results and done-markers are values of the cache service (:mod:`harness.cache.store`):
key inside the file, checked on load, written atomically under the key's lock.
Checkpoints are written atomically and carry their run's key; one written for another
run, or unreadable, is ignored (the run starts over) with a warning and an event.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache.atomic import TMP_INFIX, atomic_path
from harness.cache.codecs import JsonDocument
from harness.cache.keys import stable_hash
from harness.cache.store import STORE, CacheStore, Entry, Namespace

#: Layout version of a checkpoint file.
CHECKPOINT_FORMAT = 1
NAMESPACE = "checkpoints"

RESULTS: Namespace[dict[str, Any]] = Namespace(
    NAMESPACE, JsonDocument(), suffix=".completed.json", key_length=16
)
DONE: Namespace[dict[str, Any]] = Namespace(NAMESPACE, JsonDocument(), key_length=16)


@dataclass(frozen=True)
class Checkpoint:
    """The checkpoint file of one training run, bound to the run's key.

    Attributes:
        path: The file (``<training folder>/<run>.pt``).
        key: The run's key; a file written under another key is not resumed.
        store: Where warnings become events.
    """

    path: Path
    key: str
    store: CacheStore = STORE

    def save(self, payload: Mapping[str, Any]) -> None:
        """Write ``payload`` (tensors and plain values) atomically with the format and key."""
        import torch

        with atomic_path(self.path) as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "key": self.key, **payload}, tmp)

    def load(self) -> dict[str, Any] | None:
        """The saved payload, or None when there is none, it is unreadable, or it is another
        run's (``torch.load(weights_only=True)``)."""
        import torch

        if not self.path.exists():
            return None
        entry = Entry(NAMESPACE, self.key, "", self.path)
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt file must not block the case: start over
            message = f"ignoring unreadable checkpoint {self.path}: {exc}"
            self.store.report("corrupt", entry, message, {})
            return None
        if payload.get("format") != CHECKPOINT_FORMAT or payload.get("key") != self.key:
            message = f"ignoring checkpoint {self.path} written for another run"
            self.store.report("mismatch", entry, message, {})
            return None
        return payload


@dataclass(frozen=True)
class Training:
    """The working folder of one training: ``<case folder>/ft-<key>/``.

    Attributes:
        key: The training's key.
        folder: The folder.
        store: The cache store.
    """

    key: str
    folder: Path
    store: CacheStore = STORE

    def checkpoint(self, run: str, spec: Mapping[str, Any]) -> Checkpoint:
        """The checkpoint of run ``run`` whose settings are ``spec``."""
        return Checkpoint(
            self.folder / f"{run}.pt",
            stable_hash({"case": self.key, "spec": dict(spec)}),
            self.store,
        )

    def discard(self, run: str) -> None:
        """Delete the checkpoint of run ``run`` (a finished sweep run keeps its done-marker)."""
        (self.folder / f"{run}.pt").unlink(missing_ok=True)

    def finished(self, run: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The summary of a finished run from its done-marker, or ``compute()`` stored as one."""
        entry = self.store.entry(
            DONE, {"training": self.key, "run": run}, folder=self.folder, name=f"{run}.done.json"
        )
        return self.store.get_or_compute(DONE, entry, compute, describe={"run": run}).value


class RunStore:
    """One case's trainings and finished results (see the module docstring).

    Args:
        folder: The case's folder (``CaseRun.checkpoint_dir()``; one case per folder).
        scope: What identifies the case (e.g. its id); part of every key.
        store: The cache store (events and counts of the ``checkpoints`` namespace).
    """

    def __init__(
        self, folder: Path, scope: Mapping[str, Any] | None = None, store: CacheStore = STORE
    ) -> None:
        self.folder = Path(folder)
        self.scope = dict(scope or {})
        self.store = store

    def training_key(self, depends_on: Mapping[str, Any]) -> str:
        """The key of a training: the scope plus what the training depends on."""
        return stable_hash({**self.scope, **depends_on})

    def result(
        self,
        training: Mapping[str, Any],
        scoring: Mapping[str, Any],
        compute: Callable[[Training], dict[str, Any]],
        *,
        reuse: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """Return the stored result of a training and its scoring, or compute and store it.

        Args:
            training: What the training depends on (settings, data, weights, runtime).
            scoring: What the scoring adds (test data, library versions).
            compute: Trains in the given working folder and returns the result (plain
                values); the folder is deleted once the result is stored.
            reuse: False trains again and replaces a stored result.

        Returns:
            The result and whether it was stored before.
        """
        key = self.training_key(training)
        entry = self.store.entry(
            RESULTS, {"training": key, **scoring}, folder=self.folder, prefix="ft-"
        )
        lookup = self.store.get_or_compute(
            RESULTS,
            entry,
            lambda: compute(self.open(key)),
            refresh=not reuse,
            describe={"folder": self.folder.name},
        )
        if not lookup.hit:
            shutil.rmtree(self.folder / f"ft-{key}", ignore_errors=True)
        return lookup.value, lookup.hit

    def open(self, key: str) -> Training:
        """The working folder of training ``key``: created, other ``ft-*`` folders deleted,
        temporaries of killed writers removed."""
        folder = self.folder / f"ft-{key}"
        if self.folder.exists():
            for stale in self.folder.glob("ft-*"):
                if stale.is_dir() and stale != folder:
                    shutil.rmtree(stale, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(f"*{TMP_INFIX}*"):
            leftover.unlink(missing_ok=True)
            entry = Entry(NAMESPACE, key, "", leftover)
            self.store.report(
                "stale", entry, f"removed {leftover}, left by an interrupted write", {}
            )
        return Training(key, folder, self.store)
