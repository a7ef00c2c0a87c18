"""Property-based fuzzing of the four message parsers: hostile bytes raise MessageError, and only that, quickly."""

import hashlib
import json
import resource
import struct
import tracemalloc
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecos_lightning.protocol.encoder_spec import EncoderSpec
from ecos_lightning.protocol import CentroidsMessage, MessageError, ScoresMessage
from ecos_lightning.protocol.container import MAGIC
from ecos_lightning.protocol.label_messages import LabelsMessage, QueriesMessage

PREFIX = struct.Struct("<8sHHIQ")
SPEC = EncoderSpec(input_size=32, pooling="style").to_dict()
RNG = np.random.default_rng(0)
VALID = {
    CentroidsMessage: [
        CentroidsMessage(RNG.normal(size=(4, 3)).astype(np.float32), encoder=SPEC).to_bytes(),
        CentroidsMessage(RNG.normal(size=(4, 2)).astype(np.float16), RNG.normal(size=(5, 2)).astype(np.float32),
                         np.zeros(2, np.float32), SPEC).to_bytes(),
    ],
    ScoresMessage: [ScoresMessage(np.array([3, -1, 0.5], np.float32), 4.0, 2, 1e-5, 0.9, "ab" * 32, 1.5).to_bytes(),
                    ScoresMessage(np.ones(2, np.float32), 0.0, 1, 1e-5, float("inf"), "cd" * 32).to_bytes()],
    QueriesMessage: [QueriesMessage(RNG.normal(size=(3, 4)).astype(np.float32), SPEC, "0123456789abcdef").to_bytes()],
    LabelsMessage: [LabelsMessage(np.array([0, 2, 1], np.int64), ("a", "b", "c"), "cd" * 32, 2.0, 5, 0.3, 1e-5, 1.2,
                                  3.4).to_bytes()],
}
ALL_VALID = [blob for blobs in VALID.values() for blob in blobs]


def split(blob: bytes) -> tuple[dict, bytes]:
    """(header dict, safetensors payload) of a serialised message."""
    _, _, _, header_len, _ = PREFIX.unpack_from(blob)
    return json.loads(blob[PREFIX.size:PREFIX.size + header_len]), blob[PREFIX.size + header_len:-32]


def seal(header, payload: bytes, version: int = 1, reserved: int = 0) -> bytes:
    """A message with correct lengths and checksum around ``header`` (dict or raw bytes) and ``payload``."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = PREFIX.pack(MAGIC, version, reserved, len(raw), len(payload)) + raw + payload
    return body + hashlib.sha256(body).digest()


def json_values():
    ints = st.integers() | st.just(10 ** 400)
    leaves = (st.none() | st.booleans() | ints | st.floats() | st.text(max_size=12)
              | st.sampled_from(["float32", "float16", "int64", "F32", "centroids", "scores", "offline", "style"]))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=12)


@st.composite
def header_edit(draw, blob: bytes) -> bytes:
    """A valid message whose JSON header has one field replaced, added or removed; resealed."""
    header, payload = split(blob)
    value = draw(json_values() | st.lists(st.integers(0, 2 ** 45), max_size=5))
    paths = [("kind",), ("tensors",), ("meta",)]
    paths += [("tensors", name, key) for name in header["tensors"] for key in ("dtype", "shape")]
    paths += [("meta", key) for key in header["meta"]]
    paths += [("meta", "encoder", key) for key in (header["meta"].get("encoder") or {})]
    path = draw(st.sampled_from(paths))
    target = header
    for key in path[:-1]:
        target = target[key]
    if draw(st.booleans()):
        target[path[-1]] = value
    else:
        target.pop(path[-1])
    if draw(st.booleans()):
        target[draw(st.text(max_size=6))] = value
    return seal(header, payload)


@st.composite
def hostile(draw, cls) -> bytes:
    blob = draw(st.sampled_from(VALID[cls]))
    mode = draw(st.sampled_from(["random", "prefixed", "truncate", "flip", "flip_sealed", "header", "raw_header",
                                 "payload", "lengths", "other_kind"]))
    if mode == "random":
        return draw(st.binary(max_size=600))
    if mode == "prefixed":  # past the magic and version, then noise
        return PREFIX.pack(MAGIC, 1, 0, draw(st.integers(0, 2 ** 32 - 1)),
                           draw(st.integers(0, 2 ** 64 - 1))) + draw(st.binary(max_size=300))
    if mode == "truncate":
        return blob[:draw(st.integers(0, len(blob) - 1))]
    if mode in ("flip", "flip_sealed"):
        data = bytearray(blob if mode == "flip" else blob[:-32])
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
            data[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(data) if mode == "flip" else bytes(data) + hashlib.sha256(bytes(data)).digest()
    if mode == "header":
        return draw(header_edit(blob))
    if mode == "raw_header":
        return seal(draw(st.binary(max_size=200) | st.text(max_size=200).map(str.encode)), split(blob)[1])
    if mode == "payload":
        header, payload = split(blob)
        return seal(header, draw(st.binary(max_size=len(payload) + 64)))
    if mode == "lengths":
        header, payload = split(blob)
        return seal(header, payload, version=draw(st.integers(0, 3)), reserved=draw(st.integers(0, 1)))
    return draw(st.sampled_from([b for b in ALL_VALID if b not in VALID[cls]]))


@pytest.mark.parametrize("cls", [CentroidsMessage, ScoresMessage, QueriesMessage, LabelsMessage],
                         ids=lambda c: c.__name__)
@settings(max_examples=1000, deadline=timedelta(milliseconds=250), suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_bytes_raise_only_message_error(cls, data):
    blob = data.draw(hostile(cls))
    try:
        message = cls.from_bytes(blob)
    except MessageError:
        return
    assert isinstance(message, cls)
    assert cls.from_bytes(message.to_bytes()).to_bytes() == message.to_bytes()


@pytest.mark.parametrize("cls", [CentroidsMessage, ScoresMessage, QueriesMessage, LabelsMessage],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("case", ["container_shape", "safetensors_shape", "declared_lengths"])
def test_huge_declared_shapes_allocate_nothing(cls, case):
    header, payload = split(VALID[cls][0])
    name = next(iter(header["tensors"]))
    if case == "container_shape":
        header["tensors"][name]["shape"] = [2 ** 39, 2 ** 39]
        blob = seal(header, payload)
    elif case == "safetensors_shape":  # the payload's own header claims a 4 TiB tensor
        inner = json.dumps({name: {"dtype": "F32", "shape": [2 ** 30, 2 ** 10], "data_offsets": [0, 2 ** 42]}})
        raw = inner.encode() + b" " * (-len(inner) % 8)
        blob = seal(header, struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
    else:
        blob = PREFIX.pack(MAGIC, 1, 0, 2 ** 20, 2 ** 40) + b"{}" + b"\0" * 62
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        with pytest.raises(MessageError):
            cls.from_bytes(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024  # KiB


@pytest.mark.parametrize("cls,path", [(ScoresMessage, ("meta", "noise_multiplier")),
                                      (CentroidsMessage, ("meta", "encoder", "mean"))], ids=["scores", "centroids"])
def test_huge_json_integers_in_meta(cls, path):
    header, payload = split(VALID[cls][0])
    target = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = 10 ** 400 if path[-1] != "mean" else [10 ** 400, 0, 0]
    with pytest.raises(MessageError):
        cls.from_bytes(seal(header, payload))


@pytest.mark.parametrize("cls", [QueriesMessage, LabelsMessage], ids=lambda c: c.__name__)
def test_label_messages_round_trip_byte_exact(cls):
    blob = VALID[cls][0]
    assert cls.from_bytes(blob).to_bytes() == blob


@pytest.mark.parametrize("edit,field", [
    (lambda h: h["meta"].update(class_names=["a", "a", "b"]), "class_names"),
    (lambda h: h["meta"].update(queries_digest="xyz"), "queries_digest"),
    (lambda h: h["meta"].update(sampling_rate=0.0), "sampling_rate"),
    (lambda h: h["meta"].update(k=True), "k"),
    (lambda h: h["meta"].update(epsilon=-1), "epsilon"),
    (lambda h: h["meta"].update(class_names=["a", "b"]), "labels"),  # label 2 out of range
])
def test_labels_message_names_the_bad_field(edit, field):
    header, payload = split(VALID[LabelsMessage][0])
    edit(header)
    with pytest.raises(MessageError, match=field):
        LabelsMessage.from_bytes(seal(header, payload))
