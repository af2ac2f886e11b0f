"""The protocol registry: every protocol registers itself once, everything else reads it.

A protocol is one module (or package) under ``harness/protocols/`` that decorates the
function running one case::

    @register_protocol(
        "linear",
        version=VERSION,
        marker="linear-probe benchmark cases (frozen features, logistic regression)",
        config=LinearConfig,
    )
    def run_case(case: CaseContext, config: LinearConfig) -> ProtocolResult:
        features = case.features()
        return run(features["train"], features["val"], features["test"], case.task, config)

Suites, pytest markers, the plugin and the report read the registry; the modules are
found by :func:`discover`, which imports every module of this package plus the modules
named in ``MEDXFER_PROTOCOL_MODULES`` (comma-separated import names of a user's own
protocols). Discovery imports the protocols' dependencies (numpy, scikit-learn, torch),
so it runs only when a session needs it, never when the plugin is imported.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from harness.config.model_cards import CHANNEL_RULES
from harness.config.names import did_you_mean

if TYPE_CHECKING:
    from harness.protocols.base import ProtocolResult

PROTOCOL_MODULES_ENV = "MEDXFER_PROTOCOL_MODULES"
Display = Literal["leaderboard", "descriptive"]
Needs = Literal["features", "images"]
_INTERNAL = frozenset({"base", "registry"})


class ProtocolError(ValueError):
    """A protocol is unknown, registered twice, or declared inconsistently."""


class CaseNotApplicable(Exception):
    """Raised by a protocol when the case cannot run on this dataset (the case is skipped)."""


@dataclass(frozen=True)
class Preset:
    """A named, versioned way of running a protocol exactly as a peer's code does.

    The default (``medxfer``) keeps the harness's own procedure; a preset reproduces a
    study's number on the same features or images, its bugs included where they change
    the number. A suite selects one per protocol (``presets: {linear: ssl-transfer}``),
    pytest's ``--medxfer-preset linear=ssl-transfer`` overrides it, and every record
    names the preset and its version.

    Attributes:
        protocol: The protocol it belongs to.
        name: e.g. ``ssl-transfer``; lowercase letters, digits and ``-``.
        version: Bumped whenever what the preset computes changes.
        configure: Builds the protocol's config for a case (``configure(case_run)``).
        preprocessing: Overrides of the model card's evaluation preprocessing that the
            peer's protocol uses (``input_size``, ``interpolation``, ``crop_pct``,
            ``crop_mode``, ``mean`` / ``std`` e.g. (0, 0, 0) / (1, 1, 1) for a peer's
            ``--no-norm``), or a function of the case returning them; they enter the
            feature-cache key, so one model's features under two presets may differ as
            the peers' do.
        source: Where the peer's procedure is, as ``owner/repo@commit:path``.
        summary: One line on what it reproduces.
    """

    protocol: str
    name: str
    version: int
    configure: Callable[[Any], Any]
    preprocessing: tuple[tuple[str, Any], ...] | Callable[[Any], dict[str, Any]] = ()
    source: str = ""
    summary: str = ""

    def overrides(self, case: Any) -> dict[str, Any]:
        """The preprocessing overrides for a case (a preset may make them depend on the
        dataset, e.g. SSL_medicalimaging's few-shot sub_meta datasets).

        Raises:
            ProtocolError: When a case-dependent function returns an unknown key.
        """
        if not callable(self.preprocessing):
            return dict(self.preprocessing)
        found = dict(self.preprocessing(case))
        _check_preprocessing(found, f"preset {self.protocol}={self.name}")
        return found

    def identity(self) -> dict[str, Any]:
        """What a record stores about the preset."""
        return {"name": self.name, "version": self.version, "source": self.source}


class ProfileConfig(Protocol):
    """What a protocol's config dataclass provides."""

    @classmethod
    def for_profile(cls, profile: str) -> Any: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DetailTable:
    """A report table of a protocol's per-item metrics, one row per model and dataset.

    Attributes:
        prefix: Metrics named ``<prefix><item>`` become the table's columns (``<item>``).
        title: The section heading.
        caption: One paragraph saying what the values mean.
        summary_header: Header of the last column, the case's primary value.
    """

    prefix: str
    title: str
    caption: str = ""
    summary_header: str = "primary value"


@dataclass(frozen=True)
class ProtocolSpec:
    """One registered protocol.

    Attributes:
        name: Protocol name: suite entries, case ids, the pytest marker and the report use it.
        version: Bumped on every behaviour change; recorded, and part of expected-value keys.
        marker: Help text of the pytest marker ``-m <name>``.
        config: Config dataclass with ``for_profile(profile)`` and ``to_dict()``.
        run_case: Runs one case: ``run_case(case, config) -> ProtocolResult``.
        primary_metric: The metric a case is ranked and checked by; ``None`` takes the
            dataset card's primary metric.
        display: ``leaderboard`` (ranked, compared with the random twin) or
            ``descriptive`` (a table of measures, no ranking).
        needs: ``features`` (frozen features: cases of one model and dataset share a
            pytest-xdist worker and its feature cache) or ``images`` (the protocol runs
            the backbone itself, e.g. fine-tuning: cases spread over workers freely).
        detail_metric_prefixes: Metrics starting with these are per-item details (e.g.
            per-transform values): the leaderboards leave them out.
        detail_tables: The report's tables of per-item details, one section each (their
            prefixes count as detail prefixes too).
        configure: Builds the config from the case instead of ``config.for_profile``
            (e.g. from the dataset card).
        module: The module that registered it.
    """

    name: str
    version: int
    marker: str
    config: type
    run_case: Callable[[Any, Any], ProtocolResult]
    primary_metric: str | None = None
    display: Display = "leaderboard"
    needs: Needs = "features"
    detail_metric_prefixes: tuple[str, ...] = ()
    detail_tables: tuple[DetailTable, ...] = ()
    configure: Callable[[Any], Any] | None = None
    module: str = field(default="", compare=False)

    def make_config(self, case: Any) -> Any:
        """The config of ``case`` under its profile (or its preset's, when it has one)."""
        preset = getattr(case, "preset", None)
        if preset is not None:
            return preset.configure(case)
        if self.configure is not None:
            return self.configure(case)
        return self.config.for_profile(case.profile.name)


_REGISTRY: dict[str, ProtocolSpec] = {}
_PRESETS: dict[tuple[str, str], Preset] = {}
_DISCOVERED = False
DEFAULT_PRESET = "medxfer"
PRESET_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
PREPROCESSING_KEYS = (
    "input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "histogram_normalize",
    "channels",
)
CROP_MODES = ("center", "squash")


def register_protocol(
    name: str,
    *,
    version: int,
    marker: str,
    config: type,
    primary_metric: str | None = None,
    display: Display = "leaderboard",
    needs: Needs = "features",
    detail_metric_prefixes: tuple[str, ...] = (),
    detail_tables: tuple[DetailTable, ...] = (),
    configure: Callable[[Any], Any] | None = None,
) -> Callable[[Callable[[Any, Any], ProtocolResult]], Callable[[Any, Any], ProtocolResult]]:
    """Decorator registering ``run_case`` as protocol ``name`` (see :class:`ProtocolSpec`).

    Raises:
        ProtocolError: On an invalid name, version, display or ``needs``, or a name that
            another module registered.
    """
    if not name.isidentifier() or not name.islower():
        raise ProtocolError(f"protocol name {name!r} must be a lowercase identifier")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProtocolError(f"protocol {name}: version must be a positive integer")
    if display not in ("leaderboard", "descriptive"):
        raise ProtocolError(f"protocol {name}: display must be leaderboard or descriptive")
    if needs not in ("features", "images"):
        raise ProtocolError(f"protocol {name}: needs must be features or images")
    if configure is None and not hasattr(config, "for_profile"):
        raise ProtocolError(f"protocol {name}: {config.__name__} has no for_profile()")

    def decorate(fn: Callable[[Any, Any], ProtocolResult]) -> Callable[[Any, Any], ProtocolResult]:
        spec = ProtocolSpec(
            name,
            version,
            marker,
            config,
            fn,
            primary_metric,
            display,
            needs,
            tuple(dict.fromkeys([*detail_metric_prefixes, *(t.prefix for t in detail_tables)])),
            tuple(detail_tables),
            configure,
            fn.__module__,
        )
        known = _REGISTRY.get(name)
        if known is not None and known.module != spec.module:
            raise ProtocolError(
                f"protocol {name!r} is registered by {known.module} and again by {spec.module}"
            )
        _REGISTRY[name] = spec
        return fn

    return decorate


def register_preset(
    protocol: str,
    name: str,
    *,
    version: int,
    preprocessing: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
    source: str = "",
    summary: str = "",
) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Decorator registering ``configure(case_run) -> config`` as a preset of ``protocol``.

    Raises:
        ProtocolError: On an invalid name or version, an unknown preprocessing key, or a
            name another module registered for the same protocol.
    """
    if not PRESET_NAME.fullmatch(name) or name == DEFAULT_PRESET:
        raise ProtocolError(
            f"preset name {name!r} of protocol {protocol} must be lowercase words joined by "
            f"'-' and not {DEFAULT_PRESET!r}"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProtocolError(f"preset {protocol}={name}: version must be a positive integer")
    if not callable(preprocessing):
        _check_preprocessing(preprocessing or {}, f"preset {protocol}={name}")

    def decorate(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        overrides = (
            preprocessing
            if callable(preprocessing)
            else tuple(sorted((preprocessing or {}).items()))
        )
        preset = Preset(protocol, name, version, fn, overrides, source, summary)
        known = _PRESETS.get((protocol, name))
        if known is not None and known.configure.__module__ != fn.__module__:
            raise ProtocolError(
                f"preset {protocol}={name} is registered by {known.configure.__module__} and "
                f"again by {fn.__module__}"
            )
        _PRESETS[(protocol, name)] = preset
        return fn

    return decorate


def _check_preprocessing(overrides: dict[str, Any], where: str) -> None:
    unknown = set(overrides) - set(PREPROCESSING_KEYS)
    if unknown:
        raise ProtocolError(
            f"{where}: unknown preprocessing key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PREPROCESSING_KEYS)}"
        )
    if overrides.get("crop_mode", "center") not in CROP_MODES:
        raise ProtocolError(f"{where}: crop_mode must be one of {', '.join(CROP_MODES)}")
    if overrides.get("channels", "rgb") not in CHANNEL_RULES:
        raise ProtocolError(f"{where}: channels must be one of {', '.join(CHANNEL_RULES)}")
    for key in ("mean", "std"):
        value = overrides.get(key)
        if value is not None and (not isinstance(value, tuple) or len(value) != 3):
            raise ProtocolError(f"{where}: {key} must be a tuple of 3 numbers, got {value!r}")


def presets_of(protocol: str) -> dict[str, Preset]:
    """The presets registered for a protocol, by name (the default ``medxfer`` not included)."""
    discover()
    return {name: p for (proto, name), p in sorted(_PRESETS.items()) if proto == protocol}


def get_preset(protocol: str, name: str) -> Preset | None:
    """The preset ``name`` of ``protocol``; None for the default ``medxfer``.

    Raises:
        ProtocolError: Naming the protocol's known presets.
    """
    if name == DEFAULT_PRESET:
        return None
    known = presets_of(protocol)
    if name not in known:
        names = [DEFAULT_PRESET, *known]
        raise ProtocolError(
            f"protocol {protocol} has no preset {name!r}; known: {', '.join(names)}"
            f"{did_you_mean(name, names)}"
        )
    return known[name]


def discover() -> dict[str, ProtocolSpec]:
    """Import every protocol module once and return the registry (name -> spec)."""
    global _DISCOVERED
    if not _DISCOVERED:
        package = importlib.import_module("harness.protocols")
        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in _INTERNAL and not info.name.startswith("_"):
                importlib.import_module(f"harness.protocols.{info.name}")
        for name in filter(None, os.environ.get(PROTOCOL_MODULES_ENV, "").split(",")):
            try:
                importlib.import_module(name.strip())
            except ImportError as exc:
                raise ProtocolError(
                    f"{PROTOCOL_MODULES_ENV} names module {name.strip()!r}, which cannot be "
                    f"imported: {exc}"
                ) from exc
        _DISCOVERED = True
    return dict(_REGISTRY)


def protocol_names() -> tuple[str, ...]:
    """Names of every registered protocol, sorted."""
    return tuple(sorted(discover()))


def get_protocol(name: str) -> ProtocolSpec:
    """Return the registered protocol ``name``.

    Raises:
        ProtocolError: Naming the known protocols.
    """
    registry = discover()
    if name not in registry:
        raise ProtocolError(
            f"unknown protocol {name!r}{did_you_mean(name, registry)}; known: "
            f"{', '.join(sorted(registry))}"
        )
    return registry[name]
