"""``medxfer cache ls | clear``: what the feature cache holds, and clearing it."""

from __future__ import annotations

import argparse
import shutil
from typing import Any


def add_cache_parser(sub: Any) -> None:
    """Add the ``cache`` subcommand to the ``medxfer`` parser's subparsers."""
    p = sub.add_parser("cache", help="inspect or clear the feature cache")
    p.add_argument("action", choices=("ls", "clear"))
    p.add_argument("--model", default=None, help="clear only this model's features")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> int:
    """List the cached feature files, or remove them (all, or one model's)."""
    from harness.config.paths import feature_dir
    from harness.features import list_cache

    if args.action == "ls":
        entries = list_cache()
        total = 0
        for meta in entries:
            total += meta["bytes"]
            flag = "  CORRUPT" if meta.get("corrupt") else ""
            print(
                f"{meta['model']:36s} {meta['dataset']:22s} {meta['split']:6s} "
                f"n={meta.get('n', '?'):<6} dim={meta.get('dim', '?'):<6} "
                f"{meta['bytes'] / 1e6:7.2f} MB{flag}"
            )
        print(f"{len(entries)} feature files, {total / 1e6:.1f} MB in {feature_dir()}")
        return 0
    from harness.config.cards import model_card_set
    from harness.config.names import did_you_mean
    from harness.config.safe_paths import inside

    root = feature_dir()
    targets = [inside(root, args.model)] if args.model else [p for p in root.iterdir()]
    if args.model and not targets[0].is_dir():
        cards = model_card_set().cards
        cached = sorted(p.name for p in root.iterdir() if p.is_dir())
        if args.model not in cards:  # a typo must not look like "nothing to remove"
            raise ValueError(
                f"unknown model {args.model!r}{did_you_mean(args.model, [*cards, *cached])}: "
                f"no model card has that name and {root} holds no features for it "
                f"(cached models: {', '.join(cached) or 'none'})"
            )
    removed = 0
    for target in targets:
        if target.is_dir():
            removed += sum(1 for _ in target.rglob("*.npz"))
            shutil.rmtree(target)
        elif target.is_file():
            target.unlink()
    print(f"removed {removed} feature files from {root}")
    return 0
