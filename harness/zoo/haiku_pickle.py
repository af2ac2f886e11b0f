"""Unpickling a trusted Haiku checkpoint (BYOL's ``pretrain_res50x1.pkl``), restricted to data.

DeepMind's BYOL checkpoints are written by ``dill.dump(checkpoint_data, protocol=2)``
with ``checkpoint_data = {'experiment_state': ..., 'step': ..., 'rng': ...}``
(google-deepmind/deepmind-research@500ffd895db36fdf0e0cbbc7a52163948590e255:
byol/utils/checkpointing.py). ``experiment_state`` is the ``_ByolExperimentState``
named tuple (``online_params``, ``target_params``, ``online_state``, ``target_state``,
``opt_state``; byol/byol_experiment.py) whose parameter and state trees are Haiku's
two-level mappings ``{module path: {name: numpy array}}``, e.g.
``'res_net50/~/initial_conv': {'w': <HWIO array>}`` and
``'res_net50/~/initial_batchnorm/~/mean_ema': {'average': ..., 'counter': ..., 'hidden': ...}``.

Only this module unpickles, and only from ``medxfer convert`` (an explicit step on a
file the user chose to trust). :class:`RestrictedUnpickler` resolves a global only if it
is one of :data:`ALLOWED_GLOBALS` (numpy array / dtype / scalar reconstruction and the
builtins that plain data needs) or lies under one of :data:`RECORD_MODULES` (the
container classes of the BYOL training state: its named tuple, Haiku's mappings,
optax / BYOL optimizer states). Those containers are never imported: each becomes an
inert :class:`Record` that keeps the data it was built from and runs no code of the
named class. Anything else (``os.system``, ``builtins.eval``, ``getattr``...) is refused
with its name before the pickle stream calls anything.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.zoo.errors import CheckpointError

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # protocol 5 (numpy >= 1.16) rebuilds arrays from a buffer
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # protocol 2 writes bytes as _codecs.encode(text, 'latin1')
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "complex"),
        ("builtins", "bool"),
        ("builtins", "str"),
        ("builtins", "bytes"),
        ("builtins", "bytearray"),
    }
)
RECORD_MODULES = ("byol.", "haiku.", "optax.")
NUMPY_NAMES = {"_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype"}


class Record:
    """Stands in for a container class of the checkpoint; holds its data, runs none of its code.

    Attributes:
        args: Positional arguments the pickle built it with (a named tuple's fields).
        state: What the pickle passed to ``__setstate__`` (``None`` when nothing).
    """

    qualname = "?"
    fields: tuple[str, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Record:
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Record({self.qualname})"


# The one named tuple the BYOL checkpoint holds, with its field order.
NAMED_FIELDS = {
    "byol.byol_experiment._ByolExperimentState": (
        "online_params",
        "target_params",
        "online_state",
        "target_state",
        "opt_state",
    ),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only data globals (see the module docstring)."""

    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file)
        self.where = where
        self._records: dict[str, type[Record]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            if module.startswith("numpy") and name in NUMPY_NAMES:
                return _numpy_global(name)
            return super().find_class(module, name)
        if module.startswith(RECORD_MODULES) and name.replace("_", "").isalnum():
            qualname = f"{module}.{name}"
            if qualname not in self._records:
                attrs = {"qualname": qualname, "fields": NAMED_FIELDS.get(qualname, ())}
                self._records[qualname] = type(name, (Record,), attrs)
            return self._records[qualname]
        raise pickle.UnpicklingError(
            f"{self.where}: refused global {module}.{name}: only numpy arrays and plain "
            "data may be unpickled"
        )


def _numpy_global(name: str) -> Any:
    """numpy's own reconstruction helpers (numpy 1 pickles name ``numpy.core``, 2 ``numpy._core``)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    if name == "ndarray":
        return np.ndarray
    if name == "dtype":
        return np.dtype
    return getattr(numeric if name == "_frombuffer" else multiarray, name)


def load_restricted_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    Raises:
        CheckpointError: Naming the file and the refused global, or why it is unreadable.
    """
    where = str(path)
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, where).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(str(exc) if where in str(exc) else f"{where}: {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise CheckpointError(
            f"{where}: not a readable pickle: {type(exc).__name__}: {exc}"
        ) from exc


def haiku_arrays(checkpoint: Any, where: str) -> dict[str, np.ndarray]:
    """Flatten a BYOL checkpoint's online network to ``params/<module>/<name>`` / ``state/...``.

    Accepts the checkpoint dict (``experiment_state`` as the named tuple or as a plain
    dict) or the experiment state itself.

    Raises:
        CheckpointError: When ``online_params`` / ``online_state`` are not there or hold
            something other than numpy arrays.
    """
    experiment = checkpoint
    if isinstance(checkpoint, Mapping) and "experiment_state" in checkpoint:
        experiment = checkpoint["experiment_state"]
    trees = {}
    for part in ("online_params", "online_state"):
        tree = _field(experiment, part)
        if tree is None:
            raise CheckpointError(
                f"{where}: no {part} in the checkpoint's experiment_state (found "
                f"{_describe(experiment)}); expected a BYOL pre-training checkpoint"
            )
        trees[part.removeprefix("online_")] = tree
    flat: dict[str, np.ndarray] = {}
    for kind, tree in trees.items():
        for module, leaves in _items(tree, f"{where}: online_{kind}"):
            for name, value in _items(leaves, f"{where}: online_{kind}[{module!r}]"):
                if not isinstance(value, np.ndarray | np.generic):
                    raise CheckpointError(
                        f"{where}: online_{kind}[{module!r}][{name!r}] is "
                        f"{type(value).__name__}, not a numpy array"
                    )
                flat[f"{kind}/{module}/{name}"] = np.asarray(value)
    return flat


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    if isinstance(obj, Record) and name in obj.fields:
        index = obj.fields.index(name)
        return obj.args[index] if index < len(obj.args) else None
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return getattr(obj, name, None)
    return None


def _items(tree: Any, where: str) -> list[tuple[str, Any]]:
    """The (key, value) pairs of a mapping, or of a Record that wraps one."""
    if isinstance(tree, Mapping):
        return [(str(k), v) for k, v in tree.items()]
    if isinstance(tree, Record):
        for candidate in (*tree.args, tree.state):
            if isinstance(candidate, Mapping):
                return [(str(k), v) for k, v in candidate.items()]
            if isinstance(candidate, list | tuple) and all(
                isinstance(p, tuple) and len(p) == 2 for p in candidate
            ):
                return [(str(k), v) for k, v in candidate]
    raise CheckpointError(f"{where} is {_describe(tree)}, not a mapping of module -> arrays")


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a mapping with keys {sorted(map(str, obj))[:6]}"
    return repr(obj) if isinstance(obj, Record) else type(obj).__name__
