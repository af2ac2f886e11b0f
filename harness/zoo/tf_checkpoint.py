"""Reading a TensorFlow checkpoint (a tensor bundle) without TensorFlow.

A checkpoint ``<prefix>`` written by ``tf.compat.v1.train.Saver`` or
``tf.train.Checkpoint`` is two files:

- ``<prefix>.index``: an SSTable (LevelDB's table format) mapping each variable name to
  a ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked crc32c of the bytes);
  the empty key holds the ``BundleHeaderProto`` (number of shards, endianness, version);
- ``<prefix>.data-<shard>-of-<shards>``: the tensors' raw little-endian bytes.

The SSTable ends with a 48-byte footer (metaindex and index block handles, then the
magic number); the index block maps the last key of each data block to that block's
handle; a block is a run of prefix-compressed entries (varint shared / unshared / value
lengths), then its restart offsets, then a 5-byte trailer (compression type and masked
crc32c). TensorFlow's ``BundleWriter`` writes its table uncompressed
(``tensorflow/core/util/tensor_bundle/tensor_bundle.cc``: ``options.compression =
table::kNoCompression``); a snappy-compressed block is refused with a clear error.
Every block and tensor is checked against its crc32c.

String tensors (a TF2 checkpoint's object graph) and partitioned variables (``slices``)
are not weights of the models here: strings are listed as skipped, slices are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from harness.zoo.errors import CheckpointError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5
NO_COMPRESSION, SNAPPY = 0, 1
LITTLE_ENDIAN = 0  # BundleHeaderProto.Endianness.LITTLE
DT_STRING = 7
# tensorflow/core/framework/types.proto DataType -> numpy dtype (little-endian)
DTYPES: dict[int, str] = {
    1: "<f4",  # DT_FLOAT
    2: "<f8",  # DT_DOUBLE
    3: "<i4",  # DT_INT32
    4: "u1",  # DT_UINT8
    5: "<i2",  # DT_INT16
    6: "i1",  # DT_INT8
    9: "<i8",  # DT_INT64
    10: "?",  # DT_BOOL
    14: "bfloat16",  # DT_BFLOAT16: upper 16 bits of a float32
    17: "<u2",  # DT_UINT16
    19: "<f2",  # DT_HALF
    22: "<u4",  # DT_UINT32
    23: "<u8",  # DT_UINT64
}


@dataclass(frozen=True)
class BundleEntry:
    """One variable's ``BundleEntryProto``.

    Attributes:
        dtype: TensorFlow ``DataType`` enum value.
        shape: Dimension sizes.
        shard_id: Which data file holds the bytes.
        offset: Byte offset in that file.
        size: Byte count.
        crc32c: Masked crc32c of the bytes.
        sliced: Whether the entry is a partitioned variable (``slices`` set).
    """

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int
    sliced: bool


@dataclass(frozen=True)
class TFCheckpoint:
    """The numeric tensors of a checkpoint, by variable name, and what was skipped.

    Attributes:
        tensors: Variable name -> array (bfloat16 read as float32).
        skipped: Names of string tensors, which carry no weights.
    """

    tensors: dict[str, np.ndarray]
    skipped: tuple[str, ...]


def read_tf_checkpoint(path: Path) -> TFCheckpoint:
    """Read every numeric tensor of a TensorFlow checkpoint.

    Args:
        path: The checkpoint prefix (``.../model.ckpt-225206``) or its ``.index`` file.

    Raises:
        CheckpointError: Naming the file and the problem (missing data shard, bad
            magic, compressed block, checksum mismatch, unsupported dtype, sliced variable).
    """
    index = _index_path(path)
    prefix = index.with_suffix("")
    entries = read_index(index)
    header = entries.pop("", None)
    if header is None:
        raise CheckpointError(f"{index}: no bundle header (the empty key); not a tensor bundle")
    num_shards, endianness = _header(header, index)
    if endianness != LITTLE_ENDIAN:
        raise CheckpointError(f"{index}: big-endian tensor bundles are not supported")
    shards = [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"{index}: data file {shard.name} is missing next to it")
    tensors: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    handles = [open(shard, "rb") for shard in shards]  # noqa: SIM115 (closed below)
    try:
        for name, raw in entries.items():
            entry = parse_entry(raw, f"{index}: variable {name!r}")
            if entry.dtype == DT_STRING:
                skipped.append(name)
                continue
            tensors[name] = _tensor(entry, handles, shards, name)
    finally:
        for handle in handles:
            handle.close()
    return TFCheckpoint(tensors, tuple(skipped))


def _index_path(path: Path) -> Path:
    path = Path(path)
    candidate = path if path.suffix == ".index" else Path(f"{path}.index")
    if not candidate.is_file():
        raise CheckpointError(f"{path}: no TensorFlow checkpoint index {candidate.name} there")
    return candidate


def _tensor(entry: BundleEntry, handles: list, shards: list[Path], name: str) -> np.ndarray:
    where = f"{shards[0].parent}: variable {name!r}"
    if entry.sliced:
        raise CheckpointError(f"{where} is a partitioned (sliced) variable; not supported")
    if entry.dtype not in DTYPES:
        raise CheckpointError(f"{where} has TensorFlow dtype enum {entry.dtype}; not supported")
    if not 0 <= entry.shard_id < len(handles):
        raise CheckpointError(f"{where} names data shard {entry.shard_id} of {len(handles)}")
    handle = handles[entry.shard_id]
    handle.seek(entry.offset)
    data = handle.read(entry.size)
    if len(data) != entry.size:
        raise CheckpointError(f"{where}: {shards[entry.shard_id].name} is truncated")
    if mask_crc(crc32c(data)) != entry.crc32c:
        raise CheckpointError(f"{where}: crc32c of its bytes does not match the index")
    code = DTYPES[entry.dtype]
    if code == "bfloat16":
        halves = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        array = halves.view(np.float32)
    else:
        array = np.frombuffer(data, dtype=np.dtype(code))
    count = int(np.prod(entry.shape, dtype=np.int64))
    if array.size != count:
        raise CheckpointError(
            f"{where}: {entry.size} bytes do not hold shape {entry.shape} of dtype {code}"
        )
    return array.reshape(entry.shape).copy()


# --------------------------------------------------------------------------- SSTable


def read_index(index: Path) -> dict[str, bytes]:
    """Return every key -> value of an SSTable file, in key order.

    Raises:
        CheckpointError: For a bad footer, a compressed or corrupt block.
    """
    data = index.read_bytes()
    if len(data) < FOOTER_BYTES:
        raise CheckpointError(f"{index}: {len(data)} bytes is too short for an SSTable")
    footer = data[-FOOTER_BYTES:]
    (magic,) = struct.unpack("<Q", footer[-8:])
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{index}: bad SSTable magic {magic:#x}; not a checkpoint index")
    _metaindex, pos = _handle(footer, 0)
    index_handle, _ = _handle(footer, pos)
    out: dict[str, bytes] = {}
    for _last_key, value in _block_entries(_block(data, index_handle, index), index):
        handle, _ = _handle(value, 0)
        for key, entry in _block_entries(_block(data, handle, index), index):
            out[key.decode("utf-8")] = entry
    return out


def _handle(data: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(data, pos)
    size, pos = _varint(data, pos)
    return (offset, size), pos


def _block(data: bytes, handle: tuple[int, int], index: Path) -> bytes:
    offset, size = handle
    end = offset + size
    if end + BLOCK_TRAILER_BYTES > len(data):
        raise CheckpointError(f"{index}: block at {offset} runs past the end of the file")
    contents = data[offset:end]
    kind = data[end]
    (stored,) = struct.unpack("<I", data[end + 1 : end + 5])
    if mask_crc(crc32c(data[offset : end + 1])) != stored:
        raise CheckpointError(f"{index}: crc32c mismatch in the block at offset {offset}")
    if kind == SNAPPY:
        raise CheckpointError(
            f"{index}: block at offset {offset} is snappy-compressed; TensorFlow writes "
            "bundle indexes uncompressed and this reader does not decompress"
        )
    if kind != NO_COMPRESSION:
        raise CheckpointError(f"{index}: unknown block compression type {kind} at {offset}")
    return contents


def _block_entries(block: bytes, index: Path) -> list[tuple[bytes, bytes]]:
    """Decode a block's prefix-compressed entries (the restart array bounds them)."""
    if len(block) < 4:
        raise CheckpointError(f"{index}: block of {len(block)} bytes has no restart count")
    (restarts,) = struct.unpack("<I", block[-4:])
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise CheckpointError(f"{index}: block restart count {restarts} exceeds its size")
    restart_offsets = set(struct.unpack(f"<{restarts}I", block[limit:-4]))
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < limit:
        at = pos
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if at in restart_offsets and shared:
            raise CheckpointError(f"{index}: restart entry at {at} shares a key prefix")
        if shared > len(key) or pos + unshared + value_len > limit:
            raise CheckpointError(f"{index}: corrupt block entry at {at}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


# --------------------------------------------------------------------------- protobuf


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise CheckpointError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint longer than 64 bits")


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Decode one protobuf message into (field number, value) pairs, in order."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            (value,) = struct.unpack("<Q", data[pos : pos + 8])
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value = data[pos : pos + length]
            pos += length
        elif wire == 5:
            (value,) = struct.unpack("<I", data[pos : pos + 4])
            pos += 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _header(raw: bytes, index: Path) -> tuple[int, int]:
    """``BundleHeaderProto``: num_shards (1), endianness (2); version (3) is not needed."""
    fields = dict(_fields(raw))
    num_shards = int(fields.get(1, 1))  # type: ignore[arg-type]
    if num_shards < 1:
        raise CheckpointError(f"{index}: bundle header says {num_shards} shards")
    return num_shards, int(fields.get(2, LITTLE_ENDIAN))  # type: ignore[arg-type]


def parse_entry(raw: bytes, where: str) -> BundleEntry:
    """Decode a ``BundleEntryProto``.

    Fields: dtype (1), shape (2: TensorShapeProto, dim (2) {size (1)}), shard_id (3),
    offset (4), size (5), crc32c (6, fixed32), slices (7).

    Raises:
        CheckpointError: Naming ``where`` for a malformed entry.
    """
    try:
        fields = _fields(raw)
        values: dict[int, int | bytes] = {}
        shape: list[int] = []
        sliced = False
        for number, value in fields:
            if number == 2 and isinstance(value, bytes):
                for dim_number, dim in _fields(value):
                    if dim_number == 2 and isinstance(dim, bytes):
                        size = dict(_fields(dim)).get(1, 0)
                        shape.append(int(size))  # type: ignore[arg-type]
            elif number == 7:
                sliced = True
            else:
                values[number] = value
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: malformed BundleEntryProto ({exc})") from exc
    return BundleEntry(
        dtype=int(values.get(1, 0)),  # type: ignore[arg-type]
        shape=tuple(shape),
        shard_id=int(values.get(3, 0)),  # type: ignore[arg-type]
        offset=int(values.get(4, 0)),  # type: ignore[arg-type]
        size=int(values.get(5, 0)),  # type: ignore[arg-type]
        crc32c=int(values.get(6, 0)),  # type: ignore[arg-type]
        sliced=sliced,
    )


# --------------------------------------------------------------------------- crc32c


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, by google-crc32c's C extension."""
    return google_crc32c.value(bytes(data))


def mask_crc(crc: int) -> int:
    """LevelDB / TensorFlow's masked crc: rotate right by 15 bits, add a constant."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
