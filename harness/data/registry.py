"""Registries of dataset readers, label policies, split rules and builders.

Each entry is one function registered with a decorator, in the style of timm's
``@register_model``: a name, a version, and a frozen dataclass of typed parameters that
a dataset card fills in. A card names an entry and gives its parameters::

    reader: {format: csv_images, index: train.csv, size: 224}
    label_policy: {name: uncertain, uncertain: ones}
    split: {rule: seeded_fractions, fractions: {train: 0.7, val: 0.1, test: 0.2}}
    builder: {name: cxr_lesion, seed: 0}

Every mapping may also hold ``note:`` (free text, not hashed). The card is checked when
it loads: an unknown name, an unknown parameter, a missing one or one of the wrong type
is a :class:`~harness.config.card_fields.CardError` naming the card file and the field.
An entry's name, version and parameters enter the card's fingerprint, so **bump the
version whenever the function's output changes for some input**: prepared data built
by the old code is then rebuilt.

The function signatures (see :mod:`harness.data.table` for the types):

- reader: ``fn(params, ctx: DatasetContext) -> RawDataset``;
- label policy: ``fn(params, raw: RawDataset, ctx: DatasetContext) -> Labels``;
- split rule: ``fn(params, data: SplitInput, ctx: DatasetContext) -> {split: row indices}``;
- builder: ``fn(params, ctx: DatasetContext) -> {split: SplitData}``.

The built-in entries live in :mod:`harness.data.readers`, :mod:`harness.data.label_policies`,
:mod:`harness.data.split_rules` and :mod:`harness.data.builders`; modules named in
``$MEDXFER_DATA_MODULES`` (comma separated) are imported too, so a user's own entries
register without editing the harness. Importing this module imports no torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from harness.config.card_fields import CardError, describe_params, parse_params

DATA_MODULES_ENV = "MEDXFER_DATA_MODULES"
NAME = re.compile(r"[a-z][a-z0-9_]*")
BUILTIN_MODULES = (
    "harness.data.readers",
    "harness.data.label_policies",
    "harness.data.split_rules",
    "harness.data.split_folds",
    "harness.data.builders",
)
F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound="EntrySpec")


@dataclass(frozen=True)
class Entry:
    """One registered reader, label policy, split rule or builder.

    Attributes:
        kind: ``reader``, ``label policy``, ``split rule`` or ``builder``.
        name: the name cards use.
        version: bumped whenever the function's output changes for some input.
        params: the frozen dataclass of the entry's parameters.
        fn: the function (signature per kind, see the module docstring).
        description: one line (the first line of the function's docstring).
    """

    kind: str
    name: str
    version: int
    params: type
    fn: Callable[..., Any]
    description: str


@dataclass(frozen=True)
class EntrySpec:
    """What a card asks of one entry: its name, the entry's version, the parsed parameters.

    Attributes:
        name: the entry's name.
        version: the entry's version when the card was loaded.
        params: an instance of the entry's params dataclass.
        note: free text from the card (documentation only, not hashed).
    """

    name: str
    version: int
    params: Any
    note: str = ""

    def identity(self) -> dict[str, Any]:
        """Name, version and parameters: what the card fingerprint hashes."""
        return {
            "name": self.name,
            "version": self.version,
            "params": dataclasses.asdict(self.params),
        }


@dataclass(frozen=True)
class ReaderSpec(EntrySpec):
    """The card's ``reader:``."""


@dataclass(frozen=True)
class LabelPolicySpec(EntrySpec):
    """The card's ``label_policy:``."""


@dataclass(frozen=True)
class SplitRuleSpec(EntrySpec):
    """The card's ``split:``."""


@dataclass(frozen=True)
class BuilderSpec(EntrySpec):
    """The card's ``builder:``."""


@dataclass
class Registry(Generic[S]):
    """The entries of one kind, by name.

    Attributes:
        kind: what an entry is, for messages (``reader``).
        field: the card field holding such an entry (``reader``).
        key: the key naming the entry inside that field (``format``).
        spec_type: the spec class a card holds.
        entries: registered entries by name.
    """

    kind: str
    field: str
    key: str
    spec_type: type[S]
    entries: dict[str, Entry] = field(default_factory=dict)

    def register(self, name: str, *, version: int, params: type) -> Callable[[F], F]:
        """Register the decorated function as entry ``name``.

        Args:
            name: lowercase letters, digits and underscores; unique in this registry.
            version: a positive int; bump it whenever the output changes.
            params: a frozen dataclass; each field is a parameter cards may give.

        Raises:
            ValueError: for a malformed or duplicate name, a bad version, a params type
                that is not a frozen dataclass, or a function without a docstring.
        """
        if not NAME.fullmatch(name):
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits and _")
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"{self.kind} {name!r}: version must be a positive int")
        frozen = dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen  # type: ignore[attr-defined]
        if not frozen:
            raise ValueError(f"{self.kind} {name!r}: params must be a frozen dataclass")

        def decorate(fn: F) -> F:
            summary = (fn.__doc__ or "").strip().split("\n", 1)[0].strip()
            if not summary:
                raise ValueError(f"{self.kind} {name!r} needs a docstring")
            self.entries[name] = Entry(self.kind, name, version, params, fn, summary)
            return fn

        return decorate

    def get(self, name: str) -> Entry:
        """Return entry ``name``.

        Raises:
            LookupError: naming the known entries.
        """
        load_entries()
        if name not in self.entries:
            raise LookupError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self.entries[name]

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        load_entries()
        return tuple(sorted(self.entries))

    def available(self) -> list[tuple[str, int, str, str]]:
        """``(name, version, description, parameters)`` of every entry, by name."""
        load_entries()
        return [
            (e.name, e.version, e.description, describe_params(e.params))
            for _, e in sorted(self.entries.items())
        ]

    def parse(self, raw: Any, where: str) -> S:
        """Parse a card's mapping for this kind into a spec holding typed parameters.

        Args:
            raw: the card's mapping (e.g. the value of ``reader:``).
            where: the card file (or name), for error messages.

        Raises:
            CardError: ``<where>: field '<field>.<key>': ...`` naming what is wrong.
        """
        if not isinstance(raw, Mapping):
            raise CardError(
                f"{where}: field '{self.field}' must be a mapping, got {type(raw).__name__}"
            )
        body = dict(raw)
        name = body.pop(self.key, None)
        note = body.pop("note", "")
        where_key = f"{self.field}.{self.key}"
        if name is None or name == "":
            raise CardError(f"{where}: missing required field '{where_key}' (the {self.kind})")
        if not isinstance(name, str):
            raise CardError(f"{where}: field '{where_key}' must be str, got {name!r}")
        if not isinstance(note, str):
            raise CardError(f"{where}: field '{self.field}.note' must be str")
        try:
            entry = self.get(name)
        except LookupError:
            raise CardError(
                f"{where}: field '{where_key}': unknown {self.kind} {name!r}; "
                f"known: {', '.join(self.names())}"
            ) from None
        params = parse_params(entry.params, body, where, self.field)
        return self.spec_type(name=name, version=entry.version, params=params, note=note)

    def run(self, spec: EntrySpec, *args: Any) -> Any:
        """Call the entry a spec names with the spec's parameters and ``args``."""
        return self.get(spec.name).fn(spec.params, *args)


READERS: Registry[ReaderSpec] = Registry("reader", "reader", "format", ReaderSpec)
LABEL_POLICIES: Registry[LabelPolicySpec] = Registry(
    "label policy", "label_policy", "name", LabelPolicySpec
)
SPLIT_RULES: Registry[SplitRuleSpec] = Registry("split rule", "split", "rule", SplitRuleSpec)
BUILDERS: Registry[BuilderSpec] = Registry("builder", "builder", "name", BuilderSpec)

register_reader = READERS.register
register_label_policy = LABEL_POLICIES.register
register_split_rule = SPLIT_RULES.register
register_builder = BUILDERS.register

_LOADED = False


def load_entries() -> None:
    """Import the modules holding the built-in entries and those in ``$MEDXFER_DATA_MODULES``.

    Raises:
        CardError: when a module named in ``$MEDXFER_DATA_MODULES`` cannot be imported.
    """
    global _LOADED
    if _LOADED:
        return
    _LOADED = True  # before importing: the modules may look entries up while they load
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        for name in filter(
            None, (n.strip() for n in os.environ.get(DATA_MODULES_ENV, "").split(","))
        ):
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise CardError(
                    f"{DATA_MODULES_ENV} names module {name!r}, which cannot be imported: {exc}"
                ) from exc
    except BaseException:
        _LOADED = False
        raise
