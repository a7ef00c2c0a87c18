"""One versioned, checksummed container for every protocol message.

Layout (little-endian)::

    magic      8 bytes   b"ECOSMSG\\0"
    version    uint16    FORMAT_VERSION
    reserved   uint16    0
    header_len uint32    bytes of the JSON header
    payload_len uint64   bytes of the safetensors payload
    header     JSON (UTF-8): {"kind": str, "tensors": {name: {"dtype", "shape"}}, "meta": {...}}
    payload    safetensors bytes holding exactly the tensors the header declares
    checksum   32 bytes  SHA-256 of everything before it

Reading checks sizes before it allocates anything, then the checksum, then every field.
Nothing is unpickled; the payload is parsed by safetensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

MAGIC = b"ECOSMSG\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHHIQ")
_CHECKSUM_BYTES = 32
MAX_HEADER_BYTES = 1 << 20
#: Upper bounds of what each kind may legitimately need. centroids: K <= MAX_CLUSTERS rows of
#: d <= MAX_FEATURE_DIM (float32; plus an optional projection); scores: 4 bytes per centroid;
#: queries: the proxy's features; labels: 8 bytes per query and the class names; coverage_query: centroids and
#: a projection, as centroids; class_histogram: 4 bytes per (centroid, class) cell and the class names.
MAX_CLUSTERS = 1 << 16
MAX_FEATURE_DIM = 1 << 14
MAX_QUERIES = 1 << 20
MAX_MESSAGE_BYTES = {
    "centroids": 256 << 20,
    "scores": 4 * MAX_CLUSTERS + (64 << 10),
    "queries": 1 << 30,
    "labels": 8 * MAX_QUERIES + MAX_HEADER_BYTES + (64 << 10),
    "coverage_query": 256 << 20,
    "class_histogram": 4 * (1 << 22) + MAX_HEADER_BYTES + (64 << 10),  # coverage_messages.MAX_CELLS float32 cells
}
ALLOWED_DTYPES = ("float16", "float32", "int64")


class MessageError(ValueError):
    """A message is malformed, truncated, tampered with or of the wrong kind. The text names the field."""


def pack(kind: str, tensors: dict[str, np.ndarray], meta: dict) -> bytes:
    """Serialise ``tensors`` (C-contiguous arrays of ALLOWED_DTYPES) and JSON-able ``meta`` as one message."""
    declared = {}
    for name, array in tensors.items():
        if array.dtype.name not in ALLOWED_DTYPES:
            raise MessageError(f"tensor {name!r}: dtype {array.dtype} is not one of {ALLOWED_DTYPES}")
        declared[name] = {"dtype": array.dtype.name, "shape": list(array.shape)}
    header = json.dumps(
        {"kind": kind, "tensors": declared, "meta": meta}, sort_keys=True, allow_nan=False
    ).encode("utf-8")
    if len(header) > MAX_HEADER_BYTES:
        raise MessageError(f"header: {len(header)} bytes exceeds the limit of {MAX_HEADER_BYTES} that readers accept "
                           "(fewer or shorter names)")
    payload = save_safetensors({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header), len(payload)) + header + payload
    return body + hashlib.sha256(body).digest()


def unpack(blob: bytes, kind: str, max_bytes: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Parse a message of the given ``kind``: returns (tensors, meta). Raises ``MessageError`` only.

    ``max_bytes`` (default: ``MAX_MESSAGE_BYTES[kind]``) bounds the message before anything is parsed.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise MessageError(f"message must be bytes, got {type(blob).__name__}")
    max_bytes = MAX_MESSAGE_BYTES[kind] if max_bytes is None else max_bytes
    if len(blob) > max_bytes:
        raise MessageError(f"message size: {len(blob)} bytes exceeds the limit of {max_bytes} for a {kind!r} message")
    blob = bytes(blob)
    if len(blob) < _PREFIX.size + _CHECKSUM_BYTES:
        raise MessageError(f"message truncated: {len(blob)} bytes is shorter than the fixed prefix and checksum")
    magic, version, reserved, header_len, payload_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise MessageError(f"magic: expected {MAGIC!r}, got {magic!r} (not an ECOS message)")
    if version != FORMAT_VERSION:
        raise MessageError(f"version: this reader understands format {FORMAT_VERSION}, the message has {version}")
    if reserved != 0:
        raise MessageError(f"reserved: must be 0, got {reserved}")
    if header_len > MAX_HEADER_BYTES:
        raise MessageError(f"header_len: {header_len} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    expected = _PREFIX.size + header_len + payload_len + _CHECKSUM_BYTES
    if expected != len(blob):
        what = "truncated" if len(blob) < expected else "has trailing bytes"
        raise MessageError(f"message {what}: header_len/payload_len declare {expected} bytes, got {len(blob)}")
    body, checksum = blob[:-_CHECKSUM_BYTES], blob[-_CHECKSUM_BYTES:]
    if hashlib.sha256(body).digest() != checksum:
        raise MessageError("checksum: SHA-256 mismatch (the message is corrupt or was altered)")
    header = _parse_header(blob[_PREFIX.size : _PREFIX.size + header_len])
    if header["kind"] != kind:
        raise MessageError(f"kind: expected a {kind!r} message, got {header['kind']!r}")
    declared = _parse_declared_tensors(header["tensors"], payload_len)
    try:
        tensors = load_safetensors(blob[_PREFIX.size + header_len : -_CHECKSUM_BYTES])
    except Exception as exc:  # noqa: BLE001 - the parser's own errors become one documented type
        raise MessageError(f"payload: not a valid safetensors buffer ({exc})") from None
    if set(tensors) != set(declared):
        raise MessageError(f"payload: tensors {sorted(tensors)} do not match the header's {sorted(declared)}")
    for name, (dtype, shape) in declared.items():
        array = tensors[name]
        if array.dtype.name != dtype or tuple(array.shape) != shape:
            raise MessageError(
                f"tensor {name!r}: payload holds {array.dtype}{list(array.shape)}, header declares {dtype}{list(shape)}"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise MessageError(f"tensor {name!r}: contains NaN or Inf")
    return tensors, header["meta"]


def message_kind(blob: bytes) -> str:
    """The kind the header of ``blob`` declares, read from its prefix and header alone (bounded by
    ``MAX_HEADER_BYTES``); parse the message with its kind's class afterwards, which checks everything."""
    if len(blob) < _PREFIX.size:
        raise MessageError(f"message truncated: {len(blob)} bytes is shorter than the fixed prefix")
    magic, version, _, header_len, _ = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise MessageError(f"magic: expected {MAGIC!r}, got {magic!r} (not an ECOS message)")
    if header_len > MAX_HEADER_BYTES or len(blob) < _PREFIX.size + header_len:
        raise MessageError(f"header_len: {header_len} bytes is beyond the message or the limit of {MAX_HEADER_BYTES}")
    return _parse_header(blob[_PREFIX.size : _PREFIX.size + header_len])["kind"]


def _parse_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise MessageError(f"header: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict) or set(header) != {"kind", "tensors", "meta"}:
        raise MessageError("header: must be an object with exactly the keys kind, tensors, meta")
    if not isinstance(header["kind"], str):
        raise MessageError("header.kind: must be a string")
    if not isinstance(header["tensors"], dict):
        raise MessageError("header.tensors: must be an object")
    if not isinstance(header["meta"], dict):
        raise MessageError("header.meta: must be an object")
    return header


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 18:  # beyond int64: no field of any message needs it
        raise MessageError(f"header: integer {text[:24]}... is out of range")
    return int(text)


def _reject_constant(name: str):
    raise MessageError(f"header: non-finite number {name} is not allowed")


def _parse_declared_tensors(entries: dict, payload_len: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    declared = {}
    total = 0
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape"}:
            raise MessageError(f"header.tensors.{name}: must be an object with keys dtype and shape")
        dtype, shape = entry["dtype"], entry["shape"]
        if dtype not in ALLOWED_DTYPES:
            raise MessageError(f"header.tensors.{name}.dtype: {dtype!r} is not one of {ALLOWED_DTYPES}")
        if (
            not isinstance(shape, list)
            or len(shape) > 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 40 for s in shape)
        ):
            raise MessageError(f"header.tensors.{name}.shape: must be a list of at most 4 non-negative integers")
        total += math.prod(shape) * np.dtype(dtype).itemsize
        if total > payload_len:
            raise MessageError(f"header.tensors.{name}.shape: declares more data than the {payload_len}-byte payload")
        declared[name] = (dtype, tuple(shape))
    return declared
