import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ecos_lightning.protocol import CentroidsMessage, MessageError, ScoresMessage
from ecos_lightning.protocol.container import FORMAT_VERSION, MAGIC, pack

PREFIX = struct.Struct("<8sHHIQ")


def _centroids(dtype=np.float32):
    rng = np.random.default_rng(0)
    return CentroidsMessage(rng.normal(size=(7, 5)).astype(dtype))


def _scores():
    return ScoresMessage(np.arange(7, dtype=np.float32) - 2, 3.5, 2, 1e-5, 0.77, "ab" * 32, 1.5)


def _reseal(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _rebuild(blob: bytes, header_edit=None, version=FORMAT_VERSION, magic=MAGIC) -> bytes:
    """Re-pack a valid message with an edited header and a valid checksum (a malicious sender)."""
    _, _, _, header_len, payload_len = PREFIX.unpack_from(blob)
    header = json.loads(blob[PREFIX.size:PREFIX.size + header_len])
    payload = blob[PREFIX.size + header_len:-32]
    if header_edit:
        header_edit(header)
    raw = json.dumps(header).encode()
    return _reseal(PREFIX.pack(magic, version, 0, len(raw), len(payload)) + raw + payload)


@pytest.mark.parametrize("message", [
    _centroids(),
    _centroids(np.float16),
    CentroidsMessage(np.ones((3, 2), np.float32), np.ones((6, 2), np.float32), np.zeros(2, np.float32)),
    _scores(),
    ScoresMessage(np.ones(4, np.float32), 0.0, 1, 1e-5, float("inf"), "cd" * 32),
])
def test_round_trip_is_byte_exact(message):
    blob = message.to_bytes()
    again = type(message).from_bytes(blob)
    assert again.to_bytes() == blob
    for name in ("centroids", "projection", "bias", "scores"):
        if getattr(message, name, None) is not None:
            np.testing.assert_array_equal(getattr(again, name), getattr(message, name))
            assert getattr(again, name).dtype == getattr(message, name).dtype


def test_scores_fields_survive_the_round_trip():
    again = ScoresMessage.from_bytes(_scores().to_bytes())
    assert (again.noise_multiplier, again.q, again.delta, again.epsilon, again.radius) == (3.5, 2, 1e-5, 0.77, 1.5)
    assert again.noise_std == pytest.approx(3.5 * np.sqrt(2))


def test_encoder_spec_travels_with_the_centroids():
    from ecos_lightning.encoders import spec_for_model

    spec = spec_for_model("efficientnet_lite0", weights="offline", input_size=64).to_dict()
    again = CentroidsMessage.from_bytes(CentroidsMessage(np.ones((2, 3), np.float32), encoder=spec).to_bytes())
    assert again.encoder == spec
    bad = dict(spec, input_size=-4)
    with pytest.raises(MessageError, match="encoder"):
        CentroidsMessage(np.ones((2, 3), np.float32), encoder=bad)


def test_wrong_magic_is_rejected():
    with pytest.raises(MessageError, match="magic"):
        CentroidsMessage.from_bytes(_rebuild(_centroids().to_bytes(), magic=b"NOTECOS\x00"))


def test_wrong_version_is_rejected():
    with pytest.raises(MessageError, match="version"):
        CentroidsMessage.from_bytes(_rebuild(_centroids().to_bytes(), version=FORMAT_VERSION + 1))


def test_wrong_kind_is_rejected():
    with pytest.raises(MessageError, match="kind"):
        ScoresMessage.from_bytes(_centroids().to_bytes())


@pytest.mark.parametrize("cut", [0, 5, 23, 40, -33, -1])
def test_truncated_bytes_are_rejected(cut):
    blob = _centroids().to_bytes()
    with pytest.raises(MessageError, match="truncated"):
        CentroidsMessage.from_bytes(blob[:cut])


def test_flipped_bit_fails_the_checksum():
    blob = bytearray(_scores().to_bytes())
    blob[-40] ^= 0x01
    with pytest.raises(MessageError, match="checksum"):
        ScoresMessage.from_bytes(bytes(blob))


def test_trailing_bytes_are_rejected():
    with pytest.raises(MessageError, match="trailing"):
        ScoresMessage.from_bytes(_scores().to_bytes() + b"\0")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(value):
    scores = np.ones(4, np.float32)
    scores[1] = value
    blob = pack("scores", {"scores": scores}, json.loads(json.dumps({
        "noise_multiplier": 1.0, "q": 1, "delta": 1e-5, "epsilon": 1.0, "centroids_digest": "", "radius": None})))
    with pytest.raises(MessageError, match="NaN or Inf"):
        ScoresMessage.from_bytes(blob)
    centroids = np.ones((2, 2), np.float32)
    centroids[0, 0] = value
    with pytest.raises(MessageError, match="NaN or Inf"):
        CentroidsMessage.from_bytes(pack("centroids", {"centroids": centroids}, {"encoder": None}))


def test_wrong_dtype_is_rejected():
    blob = pack("scores", {"scores": np.ones(4, np.float16)}, {
        "noise_multiplier": 1.0, "q": 1, "delta": 1e-5, "epsilon": 1.0, "centroids_digest": "", "radius": None})
    with pytest.raises(MessageError, match="scores: must be a float32"):
        ScoresMessage.from_bytes(blob)


def test_header_that_lies_about_the_shape_is_rejected():
    def lie(header):
        header["tensors"]["centroids"]["shape"] = [5, 7]
    with pytest.raises(MessageError, match="tensor 'centroids'"):
        CentroidsMessage.from_bytes(_rebuild(_centroids().to_bytes(), lie))


def test_huge_declared_shape_is_rejected_before_allocation():
    def huge(header):
        header["tensors"]["centroids"]["shape"] = [1 << 30, 1 << 9]
    with pytest.raises(MessageError, match="more data than"):
        CentroidsMessage.from_bytes(_rebuild(_centroids().to_bytes(), huge))


def test_wrong_shape_is_rejected():
    blob = pack("centroids", {"centroids": np.ones(5, np.float32)}, {"encoder": None})
    with pytest.raises(MessageError, match="centroids: must have shape"):
        CentroidsMessage.from_bytes(blob)
    blob = pack("centroids", {"centroids": np.ones((2, 3), np.float32), "projection": np.ones((4, 2), np.float32),
                              "bias": np.ones(3, np.float32)}, {"encoder": None})
    with pytest.raises(MessageError, match="projection: shape"):
        CentroidsMessage.from_bytes(blob)


@pytest.mark.parametrize("field, value", [
    ("q", 0), ("q", 1.5), ("delta", 2.0), ("noise_multiplier", -1.0), ("epsilon", -0.1),
    ("centroids_digest", "xyz"), ("centroids_digest", ""), ("radius", -1.0),
])
def test_bad_meta_fields_are_named(field, value):
    def edit(header):
        header["meta"][field] = value
    with pytest.raises(MessageError, match=field):
        ScoresMessage.from_bytes(_rebuild(_scores().to_bytes(), edit))


def test_missing_or_unexpected_meta_fields_are_named():
    def drop(header):
        del header["meta"]["q"]
        header["meta"]["extra"] = 1
    with pytest.raises(MessageError, match=r"missing fields \['q'\], unexpected fields \['extra'\]"):
        ScoresMessage.from_bytes(_rebuild(_scores().to_bytes(), drop))


def test_scores_length_must_match_the_centroids():
    down = _centroids()
    up = ScoresMessage(np.ones(6, np.float32), 0.0, 1, 1e-5, float("inf"), down.digest())
    with pytest.raises(MessageError, match="length 6 != number of centroids K=7"):
        up.check_answers(down)


def test_message_error_is_a_value_error():
    assert issubclass(MessageError, ValueError)


def test_reading_a_message_never_unpickles(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while reading a message")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    blob = pickle.dumps({"centroids": 1})
    with pytest.raises(MessageError):
        CentroidsMessage.from_bytes(blob)
    CentroidsMessage.from_bytes(_centroids().to_bytes())
    ScoresMessage.from_bytes(_scores().to_bytes())


def test_message_modules_do_not_import_pickle_or_torch_load():
    import ecos_lightning.protocol as protocol

    for path in Path(protocol.__file__).parent.glob("*.py"):
        text = path.read_text()
        for needle in ("import pickle", "pickle.load", "torch.load", "allow_pickle=True"):
            assert needle not in text, f"{path.name} uses {needle}"


def test_a_header_readers_would_refuse_is_never_written():
    from ecos_lightning.protocol.container import MAX_HEADER_BYTES
    with pytest.raises(MessageError, match="header: .* exceeds the limit"):
        pack("scores", {"scores": np.zeros(3, np.float32)}, {"names": ["x" * 1024] * (MAX_HEADER_BYTES // 1024)})
