"""The cache service: content-keyed files, computed once, written atomically, checked on load.

Every cache of medxfer (frozen features, derived statistics, fine-tuning runs) is a
:class:`Namespace` of one :class:`CacheStore`. A value lives in one file whose name
carries its key (:func:`harness.cache.keys.stable_hash` of the key payload) and whose
content carries the key again; :meth:`CacheStore.get_or_compute` does, for every one:

1. load the file if it is there. Files are trusted by content, never by name: each
   carries its key's full text and a sha256 of its content, both checked on load
   (:mod:`harness.cache.codecs`). A file that cannot be read or whose content does not
   match its checksum (``corrupt``), or that holds another key's value (``mismatch``),
   is never a hit: a warning and an event, and it is computed again;
2. otherwise take the key's file lock (``<file>.lock``, :mod:`harness.cache.locks`:
   holder recorded, a timeout, dead holders broken): concurrent pytest-xdist workers, or
   processes sharing a cache folder, wait for one computation instead of repeating it;
   load again under the lock (another process may have written it);
3. remove temporaries left beside the file by a killed writer (``stale`` events);
4. compute, and write the file atomically (:mod:`harness.cache.atomic`): readers see
   the old file or the new one, never half of one. A computation that raises writes
   nothing.

The first time a process uses a folder, temporaries older than
:data:`~harness.cache.atomic.STALE_AFTER_S` whose writer is not alive are deleted there
(and in the namespace's folder, two levels down).

Each namespace appends its events (``hit``, the namespace's store event, ``corrupt``,
``mismatch``, ``stale``, ``unstored``) to ``<root>/<namespace>/events.jsonl``, one short
``O_APPEND`` write per event, and the store counts them per process
(:meth:`CacheStore.counts`).

A root that cannot be written (:func:`harness.config.paths.home_writable`, e.g.
``MEDXFER_CACHE_READONLY=1``) is used read-only: hits are read as usual, a miss is
computed but not stored (an ``unstored`` event), no lock or temporary is made there, and
events go to ``<results>/cache-events/<namespace>/events.jsonl`` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeVar

from harness.cache.atomic import TMP_INFIX, remove_stale_temporaries, write_with
from harness.cache.events import EVENTS_FILE, append_event, events_folder_read_only
from harness.cache.events import read_events as read_events  # part of the store's interface
from harness.cache.keys import key_text, stable_hash
from harness.cache.locks import hold
from harness.config.paths import home, home_writable

LOG = logging.getLogger("medxfer.cache")
_NOT_IN_NAMES = re.compile(r"[/\\\x00]")

T = TypeVar("T")


class KeyMismatch(Exception):
    """Raised by a codec when a readable file holds another key's value."""


class Damaged(Exception):
    """Raised by a codec when a file's content does not match the checksum stored in it."""


class Codec(Protocol[T]):
    """How the values of one namespace are written to and read from a file."""

    def write(self, handle: IO[bytes], value: T, entry: Entry) -> None:
        """Write ``value`` and ``entry``'s key to ``handle``; raise on a value it cannot store."""
        ...

    def read(self, path: Path, entry: Entry) -> T:
        """Read the value of ``entry`` from ``path``.

        Raises:
            KeyMismatch: When the file holds another key's value.
            Damaged: When its content does not match its stored checksum.
            Exception: Any other error means the file is unreadable.
        """
        ...

    def summary(self, value: T) -> dict[str, Any]:
        """Plain facts about a value for the store event (may be empty)."""
        ...


@dataclass(frozen=True)
class Namespace(Generic[T]):
    """One kind of cached value.

    Attributes:
        name: Folder under the store root (a plain name); its events log lives there.
        codec: Writes and reads the values.
        suffix: File-name suffix of the values (e.g. ``.npz``).
        key_length: Hex digits of the key in file names.
        stored_event: Name of the event logged when a value was computed and written.
    """

    name: str
    codec: Codec[T]
    suffix: str = ""
    key_length: int = 32
    stored_event: str = "store"

    def __post_init__(self) -> None:
        _check_plain("cache namespace", self.name)


@dataclass(frozen=True)
class Entry:
    """Where one key's value lives.

    Attributes:
        namespace: The namespace's name (events and counts).
        key: The key: ``stable_hash(payload, key_length)``.
        text: The key payload's canonical text, stored in the file by codecs that can.
        path: The file.
    """

    namespace: str
    key: str
    text: str
    path: Path


@dataclass(frozen=True)
class Lookup(Generic[T]):
    """The outcome of :meth:`CacheStore.get_or_compute`.

    Attributes:
        value: The value (loaded or computed).
        hit: True when it was read from the cache.
        entry: Its entry (key and file).
        seconds: Time spent loading, or waiting and computing.
    """

    value: T
    hit: bool
    entry: Entry
    seconds: float


_MISSING: Any = object()


class CacheStore:
    """Content-keyed files under one root folder, shared by every cache of medxfer.

    Args:
        root: The root folder; None resolves :func:`harness.config.paths.home` at every
            call (``MEDXFER_HOME`` may change between tests).
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._counts: dict[str, Counter[str]] = {}
        self._swept: set[Path] = set()

    def folder(self, namespace: Namespace[Any] | str) -> Path:
        """The folder of a namespace (not created)."""
        name = namespace if isinstance(namespace, str) else namespace.name
        return (self.root or home()) / name

    def entry(
        self,
        namespace: Namespace[Any],
        key_payload: Any,
        *,
        subfolders: Sequence[str] = (),
        prefix: str = "",
        folder: Path | None = None,
        name: str | None = None,
    ) -> Entry:
        """The entry of one key.

        Args:
            namespace: The kind of value.
            key_payload: Everything the value depends on (see :mod:`harness.cache.keys`).
            subfolders: Plain folder names under the namespace's folder.
            prefix: Prepended to the key in the file name.
            folder: Put the file here instead of under the namespace's folder (e.g. a
                case's checkpoint folder).
            name: The whole file name instead of ``prefix + key + suffix``.

        Returns:
            The entry.

        Raises:
            ValueError: On a subfolder that is not a plain name.
        """
        for part in subfolders:
            _check_plain("cache subfolder", part)
        key = stable_hash(key_payload, namespace.key_length)
        directory = Path(folder) if folder is not None else self.folder(namespace)
        directory = directory.joinpath(*subfolders)
        filename = name if name is not None else f"{prefix}{key}{namespace.suffix}"
        return Entry(namespace.name, key, key_text(key_payload), directory / filename)

    def get_or_compute(
        self,
        namespace: Namespace[T],
        entry: Entry,
        compute: Callable[[], T],
        *,
        validate: Callable[[T], str | None] | None = None,
        refresh: bool = False,
        describe: Mapping[str, Any] | None = None,
    ) -> Lookup[T]:
        """Return the value of ``entry`` from its file, or compute and store it once.

        Args:
            namespace: The entry's namespace (its codec reads and writes the file).
            entry: From :meth:`entry`.
            compute: Builds the value; called only on a miss, under the key's file lock.
            validate: Returns why a loaded value cannot be used (None: it can); such a
                file is computed again like one holding another key.
            refresh: Compute and overwrite even when a valid file exists.
            describe: Plain facts added to this key's events (e.g. model and dataset).

        Returns:
            The value, whether it was a hit, the entry and the time spent.
        """
        started = time.perf_counter()
        facts = dict(describe or {})
        if not self.writable():
            return self._read_only(namespace, entry, compute, validate, refresh, facts, started)
        self._sweep(entry)
        value = _MISSING if refresh else self._load(namespace, entry, validate, facts, False)
        if value is _MISSING:
            entry.path.parent.mkdir(parents=True, exist_ok=True)
            with self.lock(entry):
                if not refresh:
                    # Another process may have stored it while this one waited for the lock.
                    value = self._load(namespace, entry, validate, facts, True)
                if value is _MISSING:
                    self._remove_stale_temporaries(entry, facts)
                    self._count(entry.namespace, "miss")
                    value = compute()
                    write_with(
                        entry.path, lambda handle: namespace.codec.write(handle, value, entry)
                    )
                    seconds = time.perf_counter() - started
                    summary = {**facts, **namespace.codec.summary(value)}
                    summary.setdefault("seconds", round(seconds, 3))
                    self._event(namespace.stored_event, entry, summary, count="store")
                    LOG.info("cache %s: stored %s", entry.namespace, entry.path)
                    return Lookup(value, False, entry, seconds)
        self._event("hit", entry, facts)
        return Lookup(value, True, entry, time.perf_counter() - started)

    def _read_only(
        self,
        namespace: Namespace[T],
        entry: Entry,
        compute: Callable[[], T],
        validate: Callable[[T], str | None] | None,
        refresh: bool,
        facts: dict[str, Any],
        started: float,
    ) -> Lookup[T]:
        """:meth:`get_or_compute` on a root that cannot be written: nothing is written there."""
        value = _MISSING if refresh else self._load(namespace, entry, validate, facts, True)
        if value is not _MISSING:
            self._event("hit", entry, facts)
            return Lookup(value, True, entry, time.perf_counter() - started)
        self._count(entry.namespace, "miss")
        value = compute()
        seconds = time.perf_counter() - started
        self.report(
            "unstored",
            entry,
            f"cache {entry.namespace}: {entry.path} is not cached and the cache home is "
            "read-only; computed without storing it",
            {**facts, "seconds": round(seconds, 3)},
        )
        return Lookup(value, False, entry, seconds)

    def load(
        self,
        namespace: Namespace[T],
        entry: Entry,
        validate: Callable[[T], str | None] | None = None,
    ) -> T | None:
        """Return the value stored for ``entry``, or None when there is no usable file."""
        value = self._load(namespace, entry, validate, {}, True)
        return None if value is _MISSING else value

    def writable(self) -> bool:
        """Whether the root can be written (see :func:`harness.config.paths.home_writable`)."""
        return home_writable(self.root)

    @contextlib.contextmanager
    def lock(self, entry: Entry) -> Iterator[None]:
        """Hold the file lock of ``entry`` (``<file>.lock``) for the block.

        Raises:
            harness.cache.locks.LockTimeout: When another holder keeps it past the
                timeout (``MEDXFER_LOCK_TIMEOUT``), naming the lock file and the holder.
        """
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        with hold(Path(str(entry.path) + ".lock")):
            yield

    def counts(self, namespace: Namespace[Any] | str) -> dict[str, int]:
        """Events of a namespace in this process: ``hit``, ``miss``, ``store``, ``corrupt``,
        ``mismatch``, ``stale``."""
        name = namespace if isinstance(namespace, str) else namespace.name
        return dict(self._counts.get(name, Counter()))

    def report(self, kind: str, entry: Entry, message: str, facts: Mapping[str, Any]) -> None:
        """Log a warning and a ``kind`` event about ``entry`` (e.g. a checkpoint ignored)."""
        LOG.warning("%s", message)
        self._event(kind, entry, {**facts, "reason": message})

    def _load(
        self,
        namespace: Namespace[T],
        entry: Entry,
        validate: Callable[[T], str | None] | None,
        facts: Mapping[str, Any],
        report: bool,
    ) -> Any:
        if not entry.path.is_file():
            return _MISSING
        try:
            value = namespace.codec.read(entry.path, entry)
            problem = validate(value) if validate is not None else None
        except KeyMismatch as exc:
            problem = str(exc) or "it holds another key's value"
        except Damaged as exc:
            if report:
                self.report(
                    "corrupt",
                    entry,
                    f"cache file {entry.path} is damaged ({exc}); computing again",
                    facts,
                )
            return _MISSING
        except Exception as exc:  # a corrupt file is computed again, never trusted
            if report:
                self.report(
                    "corrupt",
                    entry,
                    f"cache file {entry.path} is unreadable ({type(exc).__name__}: {exc}); "
                    "computing again",
                    facts,
                )
            return _MISSING
        if problem is not None:
            if report:
                self.report(
                    "mismatch",
                    entry,
                    f"cache file {entry.path} does not hold its key's value ({problem}); "
                    "computing again",
                    facts,
                )
            return _MISSING
        return value

    def _sweep(self, entry: Entry) -> None:
        """Delete stale temporaries the first time this process uses a folder."""
        for folder, depth in ((self.folder(entry.namespace), 2), (entry.path.parent, 0)):
            if folder in self._swept:
                continue
            self._swept.add(folder)
            for stale in remove_stale_temporaries(folder, depth=depth):
                self.report("stale", entry, f"removed stale temporary {stale}", {})

    def _remove_stale_temporaries(self, entry: Entry, facts: Mapping[str, Any]) -> None:
        # Only the lock holder writes this key, so a temporary beside it was left by a
        # writer that was killed (SIGKILL skips the cleanup in atomic_path).
        for stale in entry.path.parent.glob(f"{entry.path.name}{TMP_INFIX}*"):
            stale.unlink(missing_ok=True)
            self.report("stale", entry, f"removed {stale}, left by an interrupted write", facts)

    def _count(self, namespace: str, kind: str) -> None:
        self._counts.setdefault(namespace, Counter())[kind] += 1

    def _event(
        self, kind: str, entry: Entry, facts: Mapping[str, Any], count: str | None = None
    ) -> None:
        self._count(entry.namespace, count or kind)
        line = json.dumps(
            {
                "event": kind,
                "pid": os.getpid(),
                "time": time.time(),
                "namespace": entry.namespace,
                "key": entry.key,
                **facts,
            },
            default=str,
        )
        folder = self.folder(entry.namespace)
        if self.writable():
            try:
                append_event(folder / EVENTS_FILE, line)
                return
            except OSError as exc:  # e.g. a home mounted read-only since the probe
                LOG.warning("cannot append to %s (%s); logging to the results folder", folder, exc)
        append_event(events_folder_read_only(entry.namespace) / EVENTS_FILE, line)


def _check_plain(what: str, name: str) -> None:
    # A model name such as ``timm:resnet50.a1_in1k`` is a folder; a path is not.
    if not name or _NOT_IN_NAMES.search(name) or name in (".", ".."):
        raise ValueError(f"{what} must be a plain folder name, got {name!r}")


#: The process's cache store (root: ``MEDXFER_HOME``); the case runner uses it.
STORE = CacheStore()
