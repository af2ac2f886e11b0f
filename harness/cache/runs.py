"""The training store: one case's resumable checkpoints and finished results.

A protocol that trains (fine-tuning) describes what its training depends on; the store
turns that into keys. In a case's folder (``<MEDXFER_HOME>/checkpoints/<case>/``):

* ``ft-<result key>.completed.json``: the finished result (metrics and details, not the
  weights) of a training plus its scoring. It carries its full key (the scope, what the
  training depends on, what the scoring adds), checked on load: a file that is
  unreadable, holds another key or fails the protocol's check is a miss (a warning naming
  the file, a ``corrupt`` / ``mismatch`` event) and is computed again, never trusted.
* ``ft-<training key>/``: the working folder of an unfinished training: one checkpoint
  per run (``<run>.pt``, bound to the run's key, resumed exactly) and one done-marker
  per finished sweep run (``<run>.done.json``).
* ``ft-<training key>.lock``: the training's lock (:mod:`harness.cache.locks`), with
  its holder (pid, host, since) recorded in it while held.

One session at a time works on a training (:meth:`RunStore.result` holds its lock
throughout): another session with the same key waits, logging who holds the lock, for
at most :func:`harness.cache.locks.lock_timeout` seconds (``MEDXFER_LOCK_TIMEOUT``,
3 hours by default) and then fails with :class:`TrainingLocked`, naming the case, the
lock file and the holder; once the holder is done it finds the stored result. Under the
lock the order makes every kill point safe: the result is written atomically first and
the working folder deleted after (a kill in between leaves a folder that the next run
deletes on its hit); a kill before leaves the checkpoints, which resume.

Opening a training deletes other keys' working folders (another profile, seed or
configuration of the case) only when they are not live. A folder whose lock is held is
kept. So is one whose lock still records a holder, i.e. one that never released it (a
killed session, or a lock that does not work across hosts), if the folder was written in
the last :data:`LIVE_WINDOW_SECONDS`, unless that holder is known to be gone (a dead pid
on this host). A folder released cleanly, or older, is deleted.

Results and done-markers are values of the cache service (:mod:`harness.cache.store`):
key inside the file, checked on load, written atomically under the key's lock.
Checkpoints are written atomically and carry their run's key; one written for another
run, or unreadable, is ignored (the run starts over) with a warning and an event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache.atomic import TMP_INFIX, atomic_path
from harness.cache.codecs import JsonDocument
from harness.cache.keys import stable_hash
from harness.cache.locks import (
    LockTimeout,
    describe_holder,
    hold,
    pid_alive,
    read_holder,
    this_host,
)
from harness.cache.store import STORE, CacheStore, Entry, Namespace

LOG = logging.getLogger("medxfer.cache")

#: Layout version of a checkpoint file.
CHECKPOINT_FORMAT = 1
NAMESPACE = "checkpoints"
#: Another key's working folder whose lock still records a holder (it never released it)
#: counts as live while written within this many seconds, unless that holder is known to
#: be gone. Longer than the gap between two checkpoints of a slow run.
LIVE_WINDOW_SECONDS = 6 * 3600.0

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


class TrainingLocked(LockTimeout):
    """Another session held a training's lock for longer than the waiter's timeout."""


class RunStore:
    """One case's trainings and finished results (see the module docstring).

    Args:
        folder: The case's folder (``CaseRun.checkpoint_dir()``; one case per folder).
        scope: What identifies the case (e.g. its id); part of every key.
        store: The cache store (events and counts of the ``checkpoints`` namespace).
        lock_timeout: Seconds to wait for another session's lock on a training; None:
            :func:`harness.cache.locks.lock_timeout` (``MEDXFER_LOCK_TIMEOUT``).
    """

    def __init__(
        self,
        folder: Path,
        scope: Mapping[str, Any] | None = None,
        store: CacheStore = STORE,
        lock_timeout: float | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.scope = dict(scope or {})
        self.store = store
        self.lock_timeout = lock_timeout

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
        validate: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Return the stored result of a training and its scoring, or compute and store it.

        The training's lock is held throughout (see the module docstring).

        Args:
            training: What the training depends on (settings, data, weights, runtime).
            scoring: What the scoring adds (test data, library versions).
            compute: Trains in the given working folder and returns the result (plain
                values); the folder is deleted once the result is stored.
            reuse: False trains again and replaces a stored result.
            validate: Returns why a stored result cannot be used (None: it can); such a
                file is a miss, computed again.

        Returns:
            The result and whether it was stored before.

        Raises:
            TrainingLocked: When another session holds the training's lock for longer
                than the timeout.
        """
        key = self.training_key(training)
        # The full payload, not only its hash: the file carries it and is checked on load.
        payload = {"scope": self.scope, "training": dict(training), "scoring": dict(scoring)}
        entry = self.store.entry(RESULTS, payload, folder=self.folder, prefix="ft-")
        with self.lock(key):
            lookup = self.store.get_or_compute(
                RESULTS,
                entry,
                lambda: compute(self.open(key)),
                validate=_result_check(validate),
                refresh=not reuse,
                describe={"folder": self.folder.name},
            )
            # After the result is stored, never before: a kill in between keeps it resumable.
            shutil.rmtree(self.folder / f"ft-{key}", ignore_errors=True)
        return lookup.value, lookup.hit

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold training ``key``'s lock (``ft-<key>.lock``) for the block.

        A waiter logs who holds it (pid, host, since) and gives up after the store's
        timeout (re-entrant within one thread).

        Raises:
            TrainingLocked: Naming the case, the lock file, the holder and the timeout.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"ft-{key}.lock"
        acquired = False
        try:
            with hold(path, self.lock_timeout):
                acquired = True
                yield
        except LockTimeout as exc:
            if acquired:  # another lock, taken inside the block
                raise
            raise TrainingLocked(
                f"fine-tune case {self.folder.name}: another session is training it "
                f"(training {key}): {exc}"
            ) from None

    def open(self, key: str) -> Training:
        """The working folder of training ``key`` (call it under :meth:`lock`): created,
        other keys' folders deleted unless live, temporaries of killed writers removed."""
        folder = self.folder / f"ft-{key}"
        if self.folder.exists():
            for other in self.folder.glob("ft-*"):
                if other.is_dir() and other != folder:
                    self._delete_unless_live(other)
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(f"*{TMP_INFIX}*"):
            leftover.unlink(missing_ok=True)
            entry = Entry(NAMESPACE, key, "", leftover)
            self.store.report(
                "stale", entry, f"removed {leftover}, left by an interrupted write", {}
            )
        return Training(key, folder, self.store)

    def _delete_unless_live(self, folder: Path) -> None:
        """Delete another key's working folder, unless a session may still be using it."""
        path = folder.with_name(folder.name + ".lock")
        # Read before taking the lock: taking it would overwrite the record.
        previous = read_holder(path)  # None: never held, or released cleanly
        if previous is not None and not _gone(previous):
            age = time.time() - _last_written(folder)
            if age < LIVE_WINDOW_SECONDS:
                LOG.info(
                    "kept %s: written %.0f s ago, its lock records %s",
                    folder,
                    age,
                    describe_holder(previous),
                )
                return
        try:
            with hold(path, timeout=0):  # no session can start on it while it goes
                shutil.rmtree(folder, ignore_errors=True)
        except LockTimeout:
            LOG.info("kept %s: another session holds %s", folder, path)


def _gone(holder: Mapping[str, Any]) -> bool:
    """True when a recorded holder has stopped: this process, or a dead pid of this host.
    A holder on another host is never known to be gone."""
    pid = holder.get("pid")
    if holder.get("host") != this_host() or not isinstance(pid, int):
        return False
    return pid == os.getpid() or not pid_alive(pid)


def _last_written(folder: Path) -> float:
    """The newest modification time of ``folder`` and the files in it (0 if it is gone)."""
    times = [0.0]
    for path in (folder, *folder.glob("*")):
        with contextlib.suppress(OSError):  # removed meanwhile
            times.append(path.stat().st_mtime)
    return max(times)


def _result_check(
    validate: Callable[[dict[str, Any]], str | None] | None,
) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"the result is a {type(value).__name__}, not a mapping"
        return validate(value) if validate is not None else None

    return check
