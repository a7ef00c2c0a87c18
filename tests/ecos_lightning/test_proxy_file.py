import json
import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecos_lightning.proxy_file import FIELDS, parse_proxy, read_proxy_file, write_proxy_file


def proxy(**changes) -> dict:
    valid = {"version": 1, "kind": "ecos-proxy", "indices": [4, 0, 9], "paths": ["/a/4.png", "/a/0.png", "/a/9.png"],
             "clusters": [1, 1, 2], "scores": [3.5, 3.5, 0.0], "labels": [0, 1, -1], "class_names": ["cat", "dog"],
             "epsilon": 0.5, "delta": 1e-5, "bytes_down": 1000, "bytes_up": 412, "open": "/a"}
    return {**valid, **changes}


def test_round_trip(tmp_path):
    path = tmp_path / "proxy.json"
    for value in (proxy(), proxy(paths=None, labels=None, class_names=None, epsilon=None)):
        write_proxy_file(path, value)
        assert read_proxy_file(path) == value


@pytest.mark.parametrize("field,value", [
    ("version", 2), ("version", True), ("kind", "proxy"), ("indices", []), ("indices", [1, 1, 2]),
    ("indices", [0, -1, 2]), ("indices", [0, 1.0, 2]), ("indices", [0, True, 2]), ("clusters", [1, 2]),
    ("clusters", [1, -2, 0]), ("scores", [1.0, float("nan"), 0.0]), ("scores", [1, "2", 3]), ("paths", ["a", "b"]),
    ("paths", ["a", "", "c"]), ("labels", [0, 2, 1]), ("labels", [0, 1]), ("class_names", ["cat", "cat"]),
    ("class_names", []), ("epsilon", -0.1), ("epsilon", float("inf")), ("delta", 0), ("delta", 1.0),
    ("bytes_down", -1), ("bytes_up", 1.5), ("open", ""), ("open", None),
])
def test_every_field_is_validated(tmp_path, field, value):
    path = tmp_path / "proxy.json"
    with pytest.raises(ValueError, match=f"'{field}'"):
        write_proxy_file(path, proxy(**{field: value}))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left
    path.write_text(json.dumps(proxy(**{field: value})))
    with pytest.raises(ValueError, match=f"'{field}'|non-finite number"):
        read_proxy_file(path)


def test_labels_need_class_names():
    with pytest.raises(ValueError, match="'class_names'"):
        parse_proxy(json.dumps(proxy(class_names=None)).encode())


def test_missing_and_unknown_fields_are_named():
    value = proxy(extra=1)
    del value["delta"]
    with pytest.raises(ValueError, match=r"missing fields \['delta'\], unexpected fields \['extra'\]"):
        parse_proxy(json.dumps(value).encode())


def test_oversized_file_is_refused_unread(tmp_path):
    path = tmp_path / "proxy.json"
    with open(path, "wb") as handle:
        handle.truncate(2 << 30)  # sparse: nothing is stored or read
    with pytest.raises(ValueError, match="larger than"):
        read_proxy_file(path)
    os.unlink(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.just(10 ** 400) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=10)


@st.composite
def hostile(draw) -> bytes:
    mode = draw(st.sampled_from(["bytes", "json", "field", "element", "drop", "truncate", "nested"]))
    if mode == "bytes":
        return draw(st.binary(max_size=400))
    if mode == "json":
        return json.dumps(draw(JSON)).encode()
    value = proxy()
    if mode == "field":
        value[draw(st.sampled_from(FIELDS + ("extra",)))] = draw(JSON)
    elif mode == "element":
        field = draw(st.sampled_from(["indices", "paths", "clusters", "scores", "labels", "class_names"]))
        value[field][draw(st.integers(0, len(value[field]) - 1))] = draw(JSON)
    elif mode == "drop":
        del value[draw(st.sampled_from(FIELDS))]
    raw = json.dumps(value).encode()
    if mode == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if mode == "nested":
        depth = draw(st.integers(1, 100_000))
        return b"[" * depth + b"]" * draw(st.integers(0, depth))
    return raw


@settings(max_examples=1000, deadline=timedelta(milliseconds=250), suppress_health_check=[HealthCheck.too_slow])
@given(raw=hostile())
def test_hostile_proxy_files_raise_only_value_error(raw):
    try:
        value = parse_proxy(raw)
    except ValueError:
        return
    assert parse_proxy(json.dumps(value).encode()) == value
