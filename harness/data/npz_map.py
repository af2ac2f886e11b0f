"""Memory-mapped members of an ``.npz`` archive, and its content checksum in bounded memory.

An ``.npz`` file is a zip archive of ``.npy`` files. A member written uncompressed
(``np.savez``, zip method ``ZIP_STORED``) holds the ``.npy`` bytes as they are, so its
array can be mapped straight from the archive: the member's local zip header gives where
the ``.npy`` file starts, the ``.npy`` header gives dtype, shape and where the data starts.
Pages are then read from disk as rows are used, and a prepared split of 200,000 images
needs none of its image array in RAM.

A compressed member (``np.savez_compressed``) cannot be mapped: it is read whole, as
before.

The archive's checksum (:func:`archive_digest`) equals
:func:`harness.cache.keys.arrays_digest` of the arrays as ``np.load`` reads them; mapped
members are hashed in blocks whose pages are dropped as the hash moves on
(:func:`harness.cache.keys.array_digest`), so checking a large archive does not leave it
resident either.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from harness.cache.keys import array_digest

LOG = logging.getLogger("medxfer.data")

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # the zip local file header, 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"
#: Compressed members larger than this are read whole with a warning (smaller: a log line).
WARN_BYTES = 256 << 20


@dataclass(frozen=True)
class Member:
    """Where one array of an ``.npz`` lies.

    Attributes:
        name: the array's name (the member's name without ``.npy``).
        stored: True when the member is uncompressed and unencrypted (it can be mapped).
        offset: byte offset of the array data in the archive file (stored members only).
        start: byte offset of the member's ``.npy`` file (stored members only).
        size: the member's size in bytes (stored members only).
        crc: the member's CRC-32 as the zip directory records it.
        shape: the array's shape (stored members only).
        dtype: the array's dtype (stored members only).
        fortran_order: whether the data is in Fortran order (stored members only).
    """

    name: str
    stored: bool
    offset: int = 0
    start: int = 0
    size: int = 0
    crc: int = 0
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    fortran_order: bool = False


def members(path: Path) -> dict[str, Member]:
    """The arrays of an ``.npz`` archive and where each one's data lies.

    Args:
        path: the archive.

    Returns:
        name -> :class:`Member`, for every ``.npy`` member.

    Raises:
        ValueError: naming the archive and member when a stored member's headers are
            damaged or its data runs past the member's end.
        OSError, zipfile.BadZipFile: when the file cannot be read as a zip archive.
    """
    path = Path(path)
    found: dict[str, Member] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                found[name] = Member(name, stored=False)
                continue
            found[name] = _stored_member(path, handle, info, name)
    return found


def _stored_member(path: Path, handle: BinaryIO, info: zipfile.ZipInfo, name: str) -> Member:
    """Parse the local zip header and the ``.npy`` header of one uncompressed member."""
    where = f"{path}: member '{info.filename}'"
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        raise ValueError(f"{where}: local zip header cut short")
    fields = _LOCAL_HEADER.unpack(header)
    if fields[0] != _LOCAL_SIGNATURE:
        raise ValueError(f"{where}: bad local zip header signature")
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    handle.seek(start)
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    offset = handle.tell()
    if dtype.hasobject:  # left to np.load, which refuses it without pickle
        return Member(name, stored=False)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + nbytes != info.file_size:
        raise ValueError(
            f"{where}: the .npy header promises {nbytes} data bytes, the member holds "
            f"{info.file_size - (offset - start)}"
        )
    return Member(name, True, offset, start, info.file_size, info.CRC, tuple(shape), dtype, fortran)


def check_crc(path: Path, member: Member) -> None:
    """Check a stored member's bytes against the CRC-32 in the zip directory.

    What ``np.load`` does when it reads a member whole; a mapped member skips it, so
    callers whose archive is not checked otherwise (a user's archive, read as it is) run
    this once. The file is read in blocks (page cache, not this process's memory).

    Raises:
        ValueError: naming the archive and member when the bytes do not match.
    """
    crc, left = 0, member.size
    with open(path, "rb") as handle:
        handle.seek(member.start)
        while left:
            block = handle.read(min(left, 1 << 22))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            left -= len(block)
    if left or crc != member.crc:
        raise ValueError(f"{path}: member '{member.name}.npy' fails its CRC-32 check (damaged)")


def open_member(path: Path, member: Member) -> np.ndarray:
    """A stored member's array as a read-only memory map of the archive file.

    The file is opened read-only and mapped read-only: nothing can be written through it.

    Raises:
        ValueError: when the member is compressed.
    """
    if not member.stored or member.dtype is None:
        raise ValueError(f"{path}: member '{member.name}.npy' is compressed; it cannot be mapped")
    if int(np.prod(member.shape, dtype=np.int64)) == 0:  # mmap cannot map zero bytes
        return np.empty(member.shape, dtype=member.dtype)
    order = "F" if member.fortran_order else "C"
    return np.memmap(
        path, dtype=member.dtype, mode="r", offset=member.offset, shape=member.shape, order=order
    )


def read_member(path: Path, member: Member, mmap: bool = True, check: bool = True) -> np.ndarray:
    """One array of an archive: mapped when it is stored and ``mmap`` is True, else read.

    A compressed member is read whole into memory, with a note (a warning when it is
    larger than :data:`WARN_BYTES`) saying why it was not mapped.

    Args:
        path: the archive.
        member: the member (from :func:`members`).
        mmap: map a stored member rather than read it.
        check: check a mapped member's CRC-32 first (:func:`check_crc`), as a whole read
            does; False when the caller checks the content otherwise.

    Raises:
        ValueError: when a mapped member fails its CRC-32 check.
    """
    if mmap and member.stored:
        if check:
            check_crc(path, member)
        return open_member(path, member)
    if mmap:
        _note_compressed(str(path), member.name)
    with np.load(path, allow_pickle=False) as archive:
        return archive[member.name]


@functools.lru_cache(maxsize=256)
def _note_compressed(path: str, name: str) -> None:
    """Say once per process and member why a compressed member is read whole."""
    with zipfile.ZipFile(path) as archive:
        size = archive.getinfo(f"{name}.npy").file_size
    level = logging.WARNING if size > WARN_BYTES else logging.INFO
    LOG.log(
        level,
        "%s: '%s' is stored compressed, so its %.1f MiB are read whole into memory; an "
        "uncompressed archive (np.savez) is memory-mapped instead",
        path,
        name,
        size / 2**20,
    )


def archive_digest(path: Path, skip: tuple[str, ...] = ()) -> str:
    """:func:`~harness.cache.keys.arrays_digest` of an archive's arrays, in bounded memory.

    Stored members are hashed through a memory map, block by block, with their pages
    dropped as the hash moves on; compressed members are read one at a time.

    Args:
        path: the archive.
        skip: array names left out (e.g. the archive's own ``meta_json``).

    Returns:
        64 hex digits, equal to ``arrays_digest({name: np.load(path)[name], ...})``.
    """
    path = Path(path)
    digest = hashlib.sha256()
    for name, member in sorted(members(path).items()):
        if name in skip:
            continue
        if member.stored:
            array = open_member(path, member)
        else:
            with np.load(path, allow_pickle=False) as archive:
                array = archive[name]
        digest.update(f"{name}={array_digest(array)};".encode())
        del array
    return digest.hexdigest()
