"""Suites: named YAML lists of models x datasets x protocols, with a profile.

A suite file ``benchmarks/suites/<name>.yaml``::

    name: demo
    version: 1
    profile: demo
    models: [tf_efficientnet_lite0.in1k_pip, tf_efficientnet_lite0.random]
    datasets: [demo_modality]
    protocols: [linear]
    exclude:                      # optional: drop single triples
      - {model: ..., dataset: ..., protocol: ...}
    only:                         # optional: run a costly protocol on a subset
      finetune: {models: [tf_efficientnet_lite0.in1k_pip], datasets: [demo_modality]}
    resolutions: [28, 64]         # optional: every dataset at each released size (MedMNIST+)
    expected_values: optional     # optional: a case without an expected value passes (with a
                                  # note) instead of failing; default: required
    include: [demo]               # optional: the cases of other suites, each kept with its
                                  # own suite, profile and expected values
    presets: {linear: ssl-transfer}  # optional: run a protocol as a peer's code does
    split: {name: fold1, rule: per_class_subsets, fold: 1}  # optional: every dataset under
                                  # this split rule instead of its card's, as <dataset>_fold1

A suite may be made of ``include`` alone (``models`` / ``datasets`` / ``protocols`` are then
optional); a case id that two of its parts both produce is an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.config.card_fields import safe_load_yaml
from harness.config.cards import CardError, DatasetCard, get_dataset_card, get_model_card
from harness.config.cases import Case, UnusableCase
from harness.config.names import did_you_mean, unsafe_name_problem
from harness.config.paths import PROJECT_ROOT, user_card_folders
from harness.config.profiles import PROFILES, get_profile
from harness.config.suite_fields import (
    SuiteError,
    name_list,
    parse_only,
    parse_presets,
    parse_split,
)
from harness.protocols.registry import DEFAULT_PRESET, protocol_names

SUITE_DIR = PROJECT_ROOT / "benchmarks" / "suites"
SUITE_FIELDS = {
    "name", "version", "profile", "models", "datasets", "protocols", "exclude", "only",
    "description", "resolutions", "expected_values", "include", "presets", "split",
}  # fmt: skip


@dataclass(frozen=True)
class Suite:
    """A parsed suite file."""

    name: str
    version: int
    profile: str
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    protocols: tuple[str, ...]
    exclude: tuple[tuple[str, str, str], ...] = ()
    only: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    description: str = ""
    path: Path = field(default=Path())
    resolutions: tuple[int, ...] = ()
    expected_required: bool = True
    include: tuple[str, ...] = ()
    presets: dict[str, str] = field(default_factory=dict)
    split_name: str = ""
    split: dict[str, Any] = field(default_factory=dict)

    def cases(
        self, profile: str | None = None, unusable: list[UnusableCase] | None = None
    ) -> list[Case]:
        """Expand the suite into cases: its own, in protocol, dataset, model order, then those
        of the suites it includes.

        Args:
            profile: overrides the suite's (and the included suites') profile.
            unusable: when given, the cases whose model or dataset card is malformed or
                unknown are appended here (each with its error) instead of raising.

        Raises:
            SuiteError: naming the suite file and the unknown or malformed card (unless
                ``unusable`` is given), or a case id produced twice.
        """
        cases = self._own_cases(profile, unusable) if self.protocols else []
        origin = {case.case_id: self.name for case in [*cases, *(unusable or [])]}
        with _expanding(self):
            for name in self.include:
                included: list[UnusableCase] | None = None if unusable is None else []
                for case in _load_included(name, self.path).cases(profile, included):
                    if case.case_id in origin:
                        raise SuiteError(
                            f"{self.path}: case {case.case_id} comes from both suite "
                            f"{origin[case.case_id]!r} and suite {case.suite!r} (include each once)"
                        )
                    origin[case.case_id] = case.suite
                    cases.append(case)
                if unusable is not None and included:
                    unusable.extend(included)
        return cases

    def suite_names(self) -> tuple[str, ...]:
        """This suite's name and those of every suite it includes (recursively)."""
        names = [self.name] if self.protocols else []
        with _expanding(self):
            for name in self.include:
                included = _load_included(name, self.path).suite_names()
                names += [n for n in included if n not in names]
        return tuple(names)

    def _own_cases(
        self, profile: str | None, unusable: list[UnusableCase] | None = None
    ) -> list[Case]:
        try:
            chosen = get_profile(profile or self.profile)
        except KeyError as exc:
            raise SuiteError(f"{self.path}: {exc.args[0]}") from exc
        broken: dict[str, str] = {}  # name as the suite lists it -> what is wrong
        models = self._resolve("model", self.models, get_model_card, broken)
        datasets = self._resolve("dataset", self.datasets, get_dataset_card, broken)
        dataset_labels = list(self.datasets)
        if self.resolutions:
            datasets, dataset_labels = self._sized(dict(datasets), broken)
        if self.split_name:
            datasets, dataset_labels = self._resplit(datasets, dataset_labels, broken)
        if broken and unusable is None:
            raise SuiteError(next(iter(broken.values())))
        for kind, resolved in (("model", models), ("dataset", datasets)):
            names = [card.name for _, card in resolved]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise SuiteError(f"{self.path}: {kind}(s) {', '.join(repeated)} listed twice")
        # an exclude entry names a model / dataset as the suite lists it (``timm:resnet50``)
        # or by its card name (``resnet50.a1_in1k``); one that matches nothing is a typo
        model_cards = dict(models)
        dataset_cards = dict(datasets)
        model_names = {n for name, card in models for n in (name, card.name)} | set(broken)
        dataset_names = {n for name, card in datasets for n in (name, card.name)} | set(broken)
        for model_name, dataset_name, protocol in self.exclude:
            for kind, given, known in (
                ("model", model_name, model_names),
                ("dataset", dataset_name, dataset_names),
            ):
                if given not in known:
                    raise SuiteError(
                        f"{self.path}: 'exclude' entry ({model_name}, {dataset_name}, "
                        f"{protocol}) names {kind} {given!r}, which the suite does not list"
                        f"{did_you_mean(given, known)}"
                    )
        cases = []
        for protocol in self.protocols:
            preset = self.presets.get(protocol, DEFAULT_PRESET)
            for dataset_name in dataset_labels:
                for model_name in self.models:
                    model, dataset = model_cards.get(model_name), dataset_cards.get(dataset_name)
                    excluded = any(
                        (m, d, protocol) in self.exclude
                        for m in {model_name, getattr(model, "name", model_name)}
                        for d in {dataset_name, getattr(dataset, "name", dataset_name)}
                    )
                    if (
                        excluded
                        or not self._allowed(protocol, "models", model_name)
                        or not self._allowed(protocol, "datasets", dataset_name)
                    ):
                        continue
                    if model is not None and dataset is not None:
                        cases.append(
                            Case(
                                model,
                                dataset,
                                protocol,
                                self.name,
                                chosen,
                                self.version,
                                self.expected_required,
                                preset,
                            )
                        )
                    elif unusable is not None:
                        error = broken.get(model_name) or broken[dataset_name]
                        unusable.append(
                            UnusableCase(
                                model=getattr(model, "name", model_name),
                                dataset=getattr(dataset, "name", dataset_name),
                                protocol=protocol,
                                suite=self.name,
                                error=error,
                                profile=chosen,
                                expected_required=self.expected_required,
                                preset=preset,
                            )
                        )
        return cases

    def _resolve(
        self, kind: str, names: tuple[str, ...], get: Any, broken: dict[str, str]
    ) -> list[tuple[str, Any]]:
        """The cards the suite lists, by the name it lists them under; a malformed or
        unknown one goes to ``broken`` with its error (a malformed card's error names its
        file; an unknown name's names the suite file and the closest names)."""
        found = []
        for name in names:
            try:
                found.append((name, get(name)))
            except CardError as exc:
                text = str(exc)
                broken[name] = text if text.startswith(("/", ".")) else f"{self.path}: {text}"
        return found

    def _sized(
        self, cards: dict[str, DatasetCard], broken: dict[str, str]
    ) -> tuple[list[tuple[str, DatasetCard]], list[str]]:
        """Every dataset at each of the suite's resolutions, named ``<name>_<size>``."""
        sized, labels = [], []
        for name in self.datasets:
            for size in self.resolutions:
                label = f"{name}_{size}"
                labels.append(label)
                if name in broken:
                    broken[label] = broken[name]
                    continue
                try:
                    sized.append((label, cards[name].at_resolution(size)))
                except CardError as exc:
                    broken[label] = str(exc)
            broken.pop(name, None)
        return sized, labels

    def _resplit(
        self, datasets: list[tuple[str, DatasetCard]], labels: list[str], broken: dict[str, str]
    ) -> tuple[list[tuple[str, DatasetCard]], list[str]]:
        """Every dataset under the suite's split override, named ``<name>_<split name>``."""
        cards = dict(datasets)
        resplit, new_labels = [], []
        for label in labels:
            new_label = f"{label}_{self.split_name}"
            new_labels.append(new_label)
            if label in broken:
                broken[new_label] = broken.pop(label)
                continue
            try:
                resplit.append((new_label, cards[label].with_split(self.split, self.split_name)))
            except CardError as exc:
                broken[new_label] = f"{self.path}: field 'split' on dataset {label}: {exc}"
        return resplit, new_labels

    def _allowed(self, protocol: str, kind: str, name: str) -> bool:
        subset = self.only.get(protocol, {}).get(kind)
        if subset is None:
            return True
        if kind == "datasets" and self.split_name:
            name = name.removesuffix(f"_{self.split_name}")
        if kind == "datasets" and self.resolutions:
            name = name.rsplit("_", 1)[0]
        return name in subset


_EXPANDING: list[str] = []  # the suites whose includes are being expanded (cycle check)


@contextmanager
def _expanding(suite: Suite) -> Iterator[None]:
    _EXPANDING.append(suite.name)
    try:
        yield
    finally:
        _EXPANDING.pop()


def _load_included(name: str, by: Path) -> Suite:
    if name in _EXPANDING:
        chain = " -> ".join([*_EXPANDING, name])
        raise SuiteError(f"{by}: 'include' of suite {name!r} makes a cycle ({chain})")
    return load_suite(name)


def suite_dirs() -> list[Path]:
    """``benchmarks/suites`` and the ``suites/`` folder of every user card folder."""
    return [SUITE_DIR, *(folder / "suites" for folder in user_card_folders())]


def suite_path(name_or_path: str) -> Path:
    """Return the file of a suite given by name (``demo``) or by path.

    A name is looked up in :func:`suite_dirs`, first match wins.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    for directory in suite_dirs():
        path = directory / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    return SUITE_DIR / f"{name_or_path}.yaml"


def available_suites() -> list[str]:
    """Return the names of the suites in :func:`suite_dirs`."""
    return sorted({path.stem for folder in suite_dirs() for path in folder.glob("*.yaml")})


def load_suite(name_or_path: str) -> Suite:
    """Load and validate a suite.

    Raises:
        SuiteError: naming the file and field at fault.
    """
    path = suite_path(name_or_path)
    if not path.is_file():
        known = available_suites()
        raise SuiteError(
            f"suite {name_or_path!r} not found ({path}){did_you_mean(name_or_path, known)}; "
            f"known suites: {', '.join(known)}"
        )
    try:
        raw = safe_load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite is a mapping")
    extra = set(raw) - SUITE_FIELDS
    if extra:
        raise SuiteError(f"{path}: unknown field(s) {', '.join(sorted(extra))}")
    include = name_list(raw, "include", path)
    if "name" not in raw:
        raise SuiteError(f"{path}: missing required field 'name'")
    own = [key for key in ("models", "datasets", "protocols") if key in raw]
    if 0 < len(own) < 3 or (not own and not include):
        missing = sorted({"models", "datasets", "protocols"} - set(own))
        raise SuiteError(
            f"{path}: missing required field {', '.join(repr(m) for m in missing)} "
            "(a suite lists models, datasets and protocols, or only 'include's other suites)"
        )
    for key in ("models", "datasets", "protocols"):
        raw.setdefault(key, [])
        if not isinstance(raw[key], list) or not all(isinstance(v, str) for v in raw[key]):
            raise SuiteError(f"{path}: field '{key}' must be a list of names")
        repeated = sorted({v for v in raw[key] if raw[key].count(v) > 1})
        if repeated:
            raise SuiteError(f"{path}: field '{key}' lists {', '.join(repeated)} more than once")
    problem = unsafe_name_problem(raw["name"])
    if problem is not None:  # the name becomes folders of the results and expected files
        raise SuiteError(f"{path}: field 'name' {problem}")
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise SuiteError(f"{path}: field 'version' must be an integer, got {version!r}")
    known_protocols = protocol_names()
    unknown = [p for p in raw["protocols"] if p not in known_protocols]
    if unknown:
        hints = "".join(did_you_mean(p, known_protocols) for p in unknown)
        raise SuiteError(
            f"{path}: unknown protocol(s) {unknown}{hints}; known: {', '.join(known_protocols)}"
        )
    resolutions = raw.get("resolutions") or []
    if not isinstance(resolutions, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resolutions
    ):
        raise SuiteError(f"{path}: field 'resolutions' must be a list of sizes (e.g. [28, 64])")
    expected_values = raw.get("expected_values", "required")
    if expected_values not in ("required", "optional"):
        raise SuiteError(
            f"{path}: field 'expected_values' must be 'required' or 'optional', "
            f"got {expected_values!r}"
        )
    profile = raw.get("profile", "demo")
    if not isinstance(profile, str) or profile not in PROFILES:
        hint = did_you_mean(profile, PROFILES) if isinstance(profile, str) else ""
        raise SuiteError(f"{path}: unknown profile {profile!r}{hint}; known: {', '.join(PROFILES)}")
    split_name, split = parse_split(raw.get("split"), path)
    exclude = []
    for item in raw.get("exclude", []) or []:
        if not isinstance(item, dict) or set(item) != {"model", "dataset", "protocol"}:
            raise SuiteError(f"{path}: each 'exclude' entry needs model, dataset and protocol")
        if not all(isinstance(v, str) for v in item.values()):
            raise SuiteError(f"{path}: 'exclude' entry {item} must give names (strings)")
        if item["protocol"] not in raw["protocols"]:
            raise SuiteError(
                f"{path}: 'exclude' entry {item} names protocol {item['protocol']!r}, which "
                "the suite does not list in 'protocols'"
            )
        exclude.append((item["model"], item["dataset"], item["protocol"]))
    return Suite(
        name=str(raw["name"]),
        version=version,
        profile=profile,
        models=tuple(raw["models"]),
        datasets=tuple(raw["datasets"]),
        protocols=tuple(raw["protocols"]),
        only=parse_only(raw.get("only"), raw, path),
        exclude=tuple(exclude),
        description=str(raw.get("description", "")),
        path=path,
        resolutions=tuple(resolutions),
        expected_required=expected_values == "required",
        include=include,
        presets=parse_presets(raw.get("presets"), raw["protocols"], path),
        split_name=split_name,
        split=split,
    )
