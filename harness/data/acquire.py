"""Getting a dataset's source in place: point at it, download it, check its layout.

What ``medxfer prepare NAME [--root PATH] [--download]`` does before the data is decoded
(:func:`harness.data.prepare.prepare`):

- :func:`link_root`: the user's copy of a dataset stays where it is; the harness's default
  data folder (``<MEDXFER_HOME>/data/<name>``) becomes a symbolic link to it, so every later
  run (pytest, other workers, the report) finds it without options.
- :func:`download`: a dataset released as one archive (MedMNIST's ``.npz`` per flag and
  size) is fetched, only when asked, into its data folder: streamed to a temporary file,
  checked against the card's md5 / sha256, renamed into place only when they match.
- :func:`check_layout`: every index file the reader needs and every image file the index
  lists is looked for; what is missing is summarised by folder (e.g. ChestX-ray14's
  ``images_003`` absent), so the user sees which part of a download is missing.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.cache.atomic import atomic_path
from harness.cache.download import file_digests, stream
from harness.config.dataset_cards import DatasetCard
from harness.config.paths import data_dir
from harness.data import DatasetError
from harness.data.pipeline import data_root, read_raw, reads_as_is, required_paths
from harness.data.table import FileImages

OFFLINE_ENV = "MEDXFER_OFFLINE"
DIGESTS = ("md5", "sha256")
TIMEOUT_S = 60
MISSING_EXAMPLES = 3
UNLOCATED = "*"  # the key of images a reader with image_dirs found in none of its folders


@dataclass
class LayoutReport:
    """What a dataset's folder lacks.

    Attributes:
        root: the data folder that was checked.
        missing_paths: index or archive files the reader needs that are absent.
        missing_images: listed image files that are absent, by top-level folder under root.
        examples: a few absent image files, by the same folder.
        images: how many image files the index lists.
    """

    root: Path
    missing_paths: list[Path] = field(default_factory=list)
    missing_images: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Path]] = field(default_factory=dict)
    images: int = 0

    @property
    def complete(self) -> bool:
        """True when nothing is missing."""
        return not self.missing_paths and not self.missing_images

    def lines(self) -> list[str]:
        """What is missing, one line per file or folder."""
        out = [
            f"missing: {path} (folder absent)" if not path.suffix else f"missing: {path}"
            for path in self.missing_paths
        ]
        for folder, count in sorted(self.missing_images.items()):
            if folder == UNLOCATED:
                shown = ", ".join(p.name for p in self.examples[folder])
                out.append(
                    f"missing: {count} of the {self.images} listed images are in none of the "
                    f"image folders (e.g. {shown})"
                )
                continue
            where = self.root / folder
            state = "absent" if not where.exists() else "incomplete"
            shown = ", ".join(str(p) for p in self.examples[folder])
            out.append(
                f"missing: {count} of the listed images under {where} (folder {state}; "
                f"e.g. {shown})"
            )
        return out


def check_layout(card: DatasetCard) -> LayoutReport:
    """Look for every file a card's reader needs, and every image its index lists.

    Raises:
        DatasetError: when an index exists but cannot be read (naming it).
    """
    root = data_root(card).resolve()  # messages name the user's folder, not the link to it
    report = LayoutReport(root=root)
    report.missing_paths = [path.resolve() for path in required_paths(card) if not path.exists()]
    if report.missing_paths or card.builder is not None or reads_as_is(card):
        return report
    images = read_raw(card).images
    if not isinstance(images, FileImages):
        return report
    report.images = len(images.paths)
    image_dirs = tuple(getattr(card.reader.params, "image_dirs", ()) or ())
    base = root / str(getattr(card.reader.params, "image_root", "."))
    for path in images.paths:
        if path.exists():
            continue
        # with image_dirs the reader cannot know which folder should hold a missing file
        folder = UNLOCATED if image_dirs else _top_folder(path.resolve(), root)
        report.missing_images[folder] += 1
        examples = report.examples.setdefault(folder, [])
        if len(examples) < MISSING_EXAMPLES:
            examples.append(path.resolve())
    if report.missing_images and image_dirs:
        report.missing_paths += [
            base / folder
            for folder in image_dirs
            if not _is_glob(folder) and not (base / folder).is_dir()
        ]
    return report


def prepare_dataset(
    card: DatasetCard, root: Path | None = None, fetch: bool = False
) -> tuple[bool, list[str]]:
    """What ``medxfer prepare NAME [--root PATH] [--download]`` does for one dataset.

    Links ``root`` in, downloads a released archive when asked, checks the layout and
    decodes the dataset (:func:`harness.data.prepare.prepare`).

    Returns:
        Whether the dataset is ready, and the lines to show: where it is and its split
        sizes, or everything that is missing followed by how to get it.

    Raises:
        DatasetError: when linking, downloading or decoding fails (naming the culprit).
    """
    from harness.data.prepare import how_to_prepare, index_file, load_splits

    link = data_dir() / (card.data_name or card.name)
    previous = link.readlink() if link.is_symlink() else None
    if root is not None:
        link_root(card, root)
    if fetch:
        download(card)
    report = check_layout(card)
    if not report.complete:
        if root is not None:  # leave no link to an incomplete copy behind
            _restore_link(link, previous)
        return False, [*report.lines(), how_to_prepare(card)]
    splits = load_splits(card)
    sizes = ", ".join(f"{name} {len(split.labels)}" for name, split in splits.items())
    lines = [f"ready at {data_root(card)}: {sizes}"]
    index = index_file(card)
    if index.is_file():
        lines.append(f"index: {index}")
    return True, lines


def link_root(card: DatasetCard, source: Path) -> Path:
    """Make the card's default data folder a link to the user's copy of the dataset.

    Args:
        card: the dataset card.
        source: the folder holding the dataset as it was downloaded.

    Returns:
        The default data folder (now a link to ``source``).

    Raises:
        DatasetError: when ``source`` is not a folder, when the card names its own
            ``reader.root``, or when a real folder already sits at the default place.
    """
    source = source.expanduser().resolve()
    if not source.is_dir():
        raise DatasetError(f"dataset {card.name!r}: --root {source} is not a folder")
    if getattr(card.reader.params, "root", None):
        raise DatasetError(
            f"{card.source_file}: field 'reader.root' already names the data folder "
            f"({card.reader.params.root}); change it there instead of passing --root"
        )
    if reads_as_is(card) or card.builder is not None:
        raise DatasetError(
            f"dataset {card.name!r} is one archive or built locally; --root is for "
            "dataset folders (put the archive in place, or use --download)"
        )
    link = data_dir() / (card.data_name or card.name)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise DatasetError(
            f"dataset {card.name!r}: {link} already holds a dataset folder; move it away "
            f"or put the data there instead of passing --root"
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.getpid()}.link")
    temporary.symlink_to(source, target_is_directory=True)
    os.replace(temporary, link)  # atomic: a concurrent reader sees the old link or the new one
    return link


def download(card: DatasetCard) -> Path:
    """Fetch a dataset released as one archive, verified against the card's checksum.

    An archive already in place is checked, not fetched again.

    Returns:
        The archive's path.

    Raises:
        DatasetError: when the card has no single-archive download, when offline, or when
            the download fails or its checksum differs (nothing is kept then).
    """
    url = str(card.obtain.get("url") or "")
    if not reads_as_is(card) or not url:
        how = card.obtain.get("instructions") or card.obtain.get("url") or "see its card"
        raise DatasetError(
            f"dataset {card.name!r} cannot be downloaded by medxfer (only datasets released "
            f"as one archive can): {str(how).strip()}"
        )
    target = data_root(card) / card.reader.params.file
    expected = {k: str(card.obtain[k]).lower() for k in ("md5", "sha256") if card.obtain.get(k)}
    if target.is_file():
        _verify(card, target, file_digests(target, DIGESTS), expected)
        return target
    if os.environ.get(OFFLINE_ENV):
        raise DatasetError(f"dataset {card.name!r}: {OFFLINE_ENV} is set; not downloading {url}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(target) as temporary:
            got = stream(url, temporary, card.name, TIMEOUT_S, DIGESTS)
            _verify(card, target, got, expected)
    except OSError as exc:  # URLError, timeouts, refused connections, a full disk
        raise DatasetError(f"dataset {card.name!r}: download of {url} failed: {exc}") from exc
    return target


def _verify(card: DatasetCard, path: Path, got: dict[str, str], expected: dict[str, str]) -> None:
    for kind, value in expected.items():
        if got[kind] != value:
            raise DatasetError(
                f"dataset {card.name!r}: {path} has {kind} {got[kind]}, the card "
                f"({card.source_file}) expects {value}; nothing was kept"
            )


def _restore_link(link: Path, target: Path | None) -> None:
    link.unlink(missing_ok=True)
    if target is not None:
        link.symlink_to(target, target_is_directory=True)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _top_folder(path: Path, root: Path) -> str:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return str(path.parent)
    return parts[0] if len(parts) > 1 else "."
