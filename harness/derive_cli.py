"""``medxfer derive``: fine-tune (or DINO-pretrain) a model on a source dataset and register
it as a model card.

Two forms:

* ``medxfer derive --parent M --dataset D [--protocol finetune|dino] [--seed S]
  [--profile P] [--preset X] [--name arch.tag] [--category C] [--cards DIR]`` derives the model now and writes (or
  updates) its entry, with the checkpoint's sha256 pinned, in ``DIR/models/derived.yaml``
  (default ``DIR``: ``$MEDXFER_HOME/cards``, on the card search path);
* ``medxfer derive NAME [--refresh]`` derives an existing derived card now (``--refresh``:
  again, even when a valid checkpoint is stored) and prints its sha256.

The derivation itself is :func:`harness.zoo.derived.derived_checkpoint`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness.config.card_fields import CardError, Fields, read_yaml
from harness.config.derived_cards import DERIVE_PROTOCOLS
from harness.config.model_cards import CATEGORIES, MODEL_NAME

DERIVED_FILE = "derived.yaml"
_HEADER = (
    "# Models derived by `medxfer derive` (docs/derived-models.md): a parent model fine-tuned\n"
    "# on a source dataset; sha256 pins the checkpoint it made.\n"
)


def add_derive_parser(sub: Any) -> None:
    """Add the ``derive`` subcommand to the ``medxfer`` parser's subparsers."""
    from harness.config.profiles import PROFILES

    p = sub.add_parser(
        "derive",
        help="fine-tune a model on a source dataset now and register it as a model card",
    )
    p.add_argument("model", nargs="?", help="an existing derived card to derive now")
    p.add_argument("--parent", help="the model card to fine-tune")
    p.add_argument("--dataset", help="the source dataset card")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed (default 0)")
    p.add_argument("--profile", default="smoke", choices=tuple(PROFILES))
    p.add_argument(
        "--protocol",
        default="finetune",
        choices=DERIVE_PROTOCOLS,
        help="how the parent is trained on the dataset: finetune (default) or dino "
        "(self-supervised pretraining; the teacher's backbone is kept)",
    )
    p.add_argument("--preset", default=None, help="a preset of that protocol (default: medxfer)")
    p.add_argument("--name", default=None, help="the new card's name (arch.tag)")
    p.add_argument(
        "--category",
        default=None,
        choices=CATEGORIES,
        help="default: in-domain for a random-init parent, else domain-adapted",
    )
    p.add_argument("--cards", default=None, help="card folder (default $MEDXFER_HOME/cards)")
    p.add_argument("--refresh", action="store_true", help="derive again even when stored")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=run_derive)


def run_derive(args: argparse.Namespace) -> int:
    """Run ``medxfer derive`` (see the module docstring); 0 on success, 2 on misuse."""
    from harness.cache.keys import file_sha256
    from harness.config.cards import get_model_card
    from harness.zoo.derived import derived_checkpoint, provenance_text

    if args.model is not None:
        if args.parent or args.dataset:
            raise ValueError("give either a derived card's NAME or --parent and --dataset")
        card = get_model_card(args.model)
        if card.weights.derived is None:
            raise ValueError(f"model {card.name} is not derived (weights.source is not derived)")
        path = derived_checkpoint(card, refresh=args.refresh, device=args.device, progress=True)
        print(f"{card.name}: checkpoint {path}")
        print(f"  sha256 {file_sha256(path)}")
        print(f"  {provenance_text(card)}")
        return 0
    if not (args.parent and args.dataset):
        raise ValueError("medxfer derive needs a derived card's NAME, or --parent and --dataset")
    card, target = _new_card(args)
    path = derived_checkpoint(card, refresh=args.refresh, device=args.device, progress=True)
    sha = file_sha256(path)
    _write_entry(target, _entry(args, card.name, card.category, sha))
    print(f"{card.name}: checkpoint {path}")
    print(f"  sha256 {sha}")
    print(f"  card written to {target}")
    return 0


def _new_card(args: argparse.Namespace) -> tuple[Any, Path]:
    """The card ``--parent``/``--dataset`` describe, resolved, and the file it goes to.

    Raises:
        CardError: On an unknown parent or dataset, a bad name, or a name another card
            file already defines.
    """
    from harness.config.cards import dataset_problem, get_model_card, model_card_set
    from harness.config.derived_cards import resolve_derived
    from harness.config.model_cards import _parse_model
    from harness.config.names import did_you_mean
    from harness.config.paths import home_card_folder

    parent = get_model_card(args.parent)
    folder = Path(args.cards).expanduser() if args.cards else home_card_folder()
    target = folder / "models" / DERIVED_FILE
    name = args.name or _default_name(args, parent.name)
    if not MODEL_NAME.fullmatch(name):
        raise CardError(f"--name {name!r} must be 'arch.tag' (letters, digits, _ - . only)")
    category = args.category or ("in-domain" if parent.is_random_init else "domain-adapted")
    known = model_card_set()
    other = known.cards.get(name)
    if other is not None and Path(other.source_file).resolve() != target.resolve():
        raise CardError(
            f"model {name!r} is already defined in {other.source_file}; derive it with "
            f"`medxfer derive {name}` or choose another --name"
        )
    raw = _entry(args, name, category, None)
    card = _parse_model(Fields(raw, f"medxfer derive: models[{name}]"))
    card = type(card)(**{**card.__dict__, "source_file": str(target)})
    pool = {**known.cards, name: card}
    failed = resolve_derived(pool, known.problems, dataset_problem, lambda n: did_you_mean(n, pool))
    if name in failed:
        raise failed[name]
    return pool[name], target


def _default_name(args: argparse.Namespace, parent: str) -> str:
    parts = [f"{parent}_{'dino' if args.protocol == 'dino' else 'ft'}_{args.dataset}"]
    if args.profile != "smoke":
        parts.append(args.profile)
    if args.preset and args.preset != "medxfer":
        parts.append(args.preset)
    if args.seed:
        parts.append(f"s{args.seed}")
    return "_".join(parts)


def _entry(args: argparse.Namespace, name: str, category: str, sha: str | None) -> dict:
    weights: dict[str, Any] = {
        "source": "derived",
        "parent": args.parent,
        "dataset": args.dataset,
        **({"protocol": args.protocol} if args.protocol != "finetune" else {}),
        "profile": args.profile,
        "seed": args.seed,
    }
    if args.preset and args.preset != "medxfer":
        weights["preset"] = args.preset
    if sha is not None:
        weights["sha256"] = sha
    return {"name": name, "weights": weights, "category": category}


def _write_entry(target: Path, entry: dict) -> None:
    """Add or replace ``entry`` (by name) in a model card file, atomically."""
    import yaml

    from harness.cache.atomic import write_text
    from harness.config.cards import forget_cards

    entries: list[Any] = []
    if target.is_file():
        raw = read_yaml(target) or {}
        entries = list(raw.get("models") or []) if isinstance(raw, dict) else []
    entries = [e for e in entries if not (isinstance(e, dict) and e.get("name") == entry["name"])]
    entries.append(entry)
    text = yaml.safe_dump({"models": entries}, sort_keys=False, default_flow_style=None)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, _HEADER + text)
    forget_cards()  # this process reads the new card from now on


def info_rows(card: Any, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``medxfer info`` rows of a card, with a derived card's source and provenance."""
    if card.weights.derived is None:
        return rows
    from harness.zoo.derived import provenance_text

    spec = card.weights.derived
    source = f"derived: {spec.parent} {spec.made} on {spec.dataset}"
    pin = card.weights.expected_sha256
    checksum = f"pinned sha256 {pin}" if pin else "not pinned (the checkpoint's sha256 is recorded)"
    replace = {"source": source, "checksum": checksum}
    out = [(label, replace.get(label, value)) for label, value in rows]
    return [*out, ("derived from", provenance_text(card).removeprefix("derived: "))]
