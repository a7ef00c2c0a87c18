"""The client's encoder policy: what a message may ask the client to run."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecos_lightning.client import encoder_policy
from ecos_lightning.client.encoder_policy import DEFAULT_MAX_INPUT_SIZE, EncoderPolicy
from ecos_lightning.encoders import spec_for_model

LITE0_STYLE_64 = 352  # efficientnet_lite0, style pooling, any input size
LITE0_AVG = 1280


def spec(**fields) -> dict:
    base = spec_for_model("efficientnet_lite0", input_size=64, pooling="style").to_dict()
    return {**base, **fields}


def test_the_allow_list_accepts_its_own_encoder_with_the_clients_weights():
    accepted = EncoderPolicy().accept(spec(), LITE0_STYLE_64, "m.ecos")
    assert accepted.name == "efficientnet_lite0" and accepted.weights == "offline" and accepted.input_size == 64
    assert EncoderPolicy().accept(spec(pooling="avg"), LITE0_AVG, "m.ecos").pooling == "avg"


@pytest.mark.parametrize("fields, dim, error", [
    ({"name": "vit_giant_patch14_224", "weights": "none"}, 1408, "does not run"),
    ({"name": "resnet18", "weights": "hub"}, 512, "does not run"),
    ({"input_size": 4096}, LITE0_STYLE_64, "input size 4096 px > this client's limit of 384"),
    ({"weights": "/etc/passwd.pth"}, LITE0_STYLE_64, "weights '/etc/passwd.pth'"),
    ({"weights": "none"}, LITE0_STYLE_64, "this client loads 'offline'"),
])
def test_what_the_client_does_not_allow_is_refused_before_anything_is_built(monkeypatch, fields, dim, error):
    def forbidden(*args, **kwargs):
        raise AssertionError("nothing may be built before the spec is accepted")

    monkeypatch.setattr(encoder_policy, "encoder_feature_dim", forbidden)
    with pytest.raises(ValueError, match=re.escape(error)):
        EncoderPolicy().accept(spec(**fields), dim, "m.ecos")


def test_a_feature_dimension_other_than_the_encoders_is_refused():
    with pytest.raises(ValueError, match="carries 1280-dimensional features, but efficientnet_lite0 with style "
                                         "pooling at 64 px gives 352"):
        EncoderPolicy().accept(spec(), 1280, "m.ecos")


def test_a_message_without_encoder_is_refused():
    with pytest.raises(ValueError, match="names no encoder"):
        EncoderPolicy().accept(None, 10, "m.ecos")


def test_the_clients_own_encoder_and_weights_file():
    own = EncoderPolicy.for_client("resnet10t", "/client/weights.safetensors")
    message = {**spec(), "name": "resnet10t", "weights": "/cloud/weights.safetensors", "pooling": "avg"}
    accepted = own.accept(message, 512, "m.ecos")
    assert accepted.weights == "/client/weights.safetensors"  # never the cloud's path
    with pytest.raises(ValueError, match="does not run"):
        own.accept(spec(), LITE0_STYLE_64, "m.ecos")
    with pytest.raises(ValueError, match="loads '/client/weights.safetensors'"):
        own.accept({**message, "weights": "none"}, 512, "m.ecos")
    with pytest.raises(ValueError, match="has no offline weights"):
        EncoderPolicy.for_client("resnet10t")
    with pytest.raises(ValueError, match="needs --encoder"):
        EncoderPolicy.for_client(None, "none")


def test_the_input_size_bound_is_the_clients_choice():
    assert EncoderPolicy(max_input_size=4096).accept(spec(input_size=512), LITE0_STYLE_64, "m").input_size == 512
    assert DEFAULT_MAX_INPUT_SIZE == 384


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["efficientnet_lite0", "resnet18", "vit_giant_patch14_224", "x" * 300, ""]),
       weights=st.sampled_from(["offline", "none", "hub", "/etc/shadow.pt", "../w.pth", "a.bin", ""]),
       size=st.integers(-10, 10000), pooling=st.sampled_from(["avg", "style", "max"]),
       dim=st.sampled_from([0, 352, 1280, 99999]))
def test_fuzzed_specs_are_accepted_only_within_the_policy(name, weights, size, pooling, dim):
    try:
        accepted = EncoderPolicy().accept(spec(name=name, weights=weights, input_size=size, pooling=pooling), dim, "m")
    except ValueError as exc:
        assert len(str(exc).splitlines()) == 1
        return
    assert (accepted.name, accepted.weights) == ("efficientnet_lite0", "offline")
    assert accepted.input_size <= DEFAULT_MAX_INPUT_SIZE
