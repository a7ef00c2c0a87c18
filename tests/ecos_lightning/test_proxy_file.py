import json
import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from PIL import Image

from ecos_lightning.proxy import FIELDS, Proxy
from ecos_lightning.proxy_file import proxy_image_files


def proxy(**changes) -> dict:
    valid = {"version": 2, "kind": "ecos-proxy", "indices": [4, 0, 9], "root": "/a",
             "paths": ["4.png", "0.png", "sub/9.png"], "clusters": [1, 1, 2], "scores": [3.5, 3.5, 0.0],
             "labels": [0, 1, -1], "class_names": ["cat", "dog"], "epsilon": 0.5, "delta": 1e-5, "bytes_down": 1000,
             "bytes_up": 412, "open": "/a"}
    return {**valid, **changes}


def test_round_trip(tmp_path):
    path = tmp_path / "proxy.json"
    for value in (proxy(), proxy(root=None, paths=None, labels=None, class_names=None, epsilon=None)):
        Proxy.from_dict(value).write(path)
        assert Proxy.read(path) == Proxy.from_dict(value)
        assert {k: v for k, v in json.loads(path.read_text()).items() if k in value} == value


@pytest.mark.parametrize("field,value", [
    ("version", 3), ("version", True), ("version", 2.0), ("kind", "proxy"), ("indices", []), ("indices", [1, 1, 2]),
    ("indices", [0, -1, 2]), ("indices", [0, 1.0, 2]), ("indices", [0, True, 2]), ("indices", [0, 2 ** 63, 2]),
    ("indices", [0, 2 ** 62, 2]), ("clusters", [1, 2]), ("clusters", [1, -2, 0]), ("clusters", [1, 2 ** 63, 0]),
    ("scores", [1.0, float("nan"), 0.0]), ("scores", [1, "2", 3]), ("root", "a"), ("root", ""), ("root", 1),
    ("paths", ["a", "b"]), ("paths", ["a", "", "c"]), ("paths", ["a", "a", "c"]), ("paths", ["/etc/passwd", "b", "c"]),
    ("paths", ["../x.png", "b", "c"]), ("paths", ["a/../../x.png", "b", "c"]), ("paths", ["a\0", "b", "c"]),
    ("paths", None), ("paths", ["a", 1, "c"]), ("labels", [0, 2, 1]), ("labels", [0, 1]),
    ("class_names", ["cat", "cat"]), ("class_names", []), ("epsilon", -0.1), ("epsilon", float("inf")),
    ("delta", 0), ("delta", 1.0), ("bytes_down", -1), ("bytes_up", 1.5), ("bytes_up", 2 ** 63), ("open", ""),
    ("open", None),
])
def test_every_field_is_validated(tmp_path, field, value):
    path = tmp_path / "proxy.json"
    with pytest.raises(ValueError, match=f"'{field}'"):
        Proxy.from_dict(proxy(**{field: value})).write(path)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left
    path.write_text(json.dumps(proxy(**{field: value})))
    with pytest.raises(ValueError, match=f"'{field}'|non-finite number"):
        Proxy.read(path)


def test_paths_need_a_root_and_a_root_needs_paths():
    for value in (proxy(root=None), proxy(paths=None)):
        with pytest.raises(ValueError, match="'paths' must be given with root"):
            Proxy.from_json(json.dumps(value))


def test_version_1_asks_for_a_new_sample(tmp_path):
    path = tmp_path / "old.json"
    old = {**proxy(version=1, paths=["/a/4.png", "/a/0.png", "/a/9.png"])}
    del old["root"]
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"^proxy file .*old.json: format version 1 .* run `ecos-cloud sample` again"):
        Proxy.read(path)


def test_unreadable_proxy_files_are_named(tmp_path):
    (tmp_path / "bad.json").write_text('{"version": 2,')
    for path, error in ((tmp_path, "is not a file"), (tmp_path / "missing.json", "not found"),
                        (tmp_path / "bad.json", "not valid UTF-8 JSON")):
        with pytest.raises(ValueError, match=f"^proxy file {path} ?:? ?{error}"):
            Proxy.read(path)


def pool_with_images(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 0, 0)).save(root / name)


def test_image_files_are_resolved_inside_the_root(tmp_path):
    pool_with_images(tmp_path / "pool", ["4.png", "0.png", "sub/9.png"])
    (tmp_path / "pool" / "link.png").symlink_to(tmp_path / "pool" / "sub" / "9.png")  # inside root: fine
    value = proxy(root=str(tmp_path / "pool"), paths=["4.png", "link.png", "0.png"])
    files = proxy_image_files(Proxy.from_dict(value))
    pool = tmp_path.resolve() / "pool"
    assert files == [pool / "4.png", pool / "sub" / "9.png", pool / "0.png"]
    with pytest.raises(ValueError, match="two paths lead to the same image"):  # a link and its target
        proxy_image_files(Proxy.from_dict(proxy(root=str(tmp_path / "pool"), paths=["4.png", "link.png", "sub/9.png"])))


def test_image_files_outside_the_root_or_not_images_are_refused(tmp_path):
    pool_with_images(tmp_path, ["outside.png", "pool/0.png"])
    root = tmp_path / "pool"
    (root / "out.png").symlink_to(tmp_path / "outside.png")
    (root / "up").symlink_to(tmp_path)
    (root / "notes.png").write_text("not an image")
    (root / "folder.png").mkdir()
    (root / "loop.png").symlink_to(root / "loop.png")
    for path, error in (("out.png", "outside the pool root"), ("up/outside.png", "outside the pool root"),
                        ("loop.png", "cannot be resolved"),
                        ("notes.png", "not a readable image"), ("folder.png", "not a regular file"),
                        ("missing.png", "does not exist")):
        with pytest.raises(ValueError, match=f"^here: '{path}' (leads |is |does )?{error}"):
            proxy_image_files(Proxy.from_dict(proxy(root=str(root), paths=["0.png", path, "x.png"])), "here")
    with pytest.raises(ValueError, match="pool root .* is not a folder"):
        proxy_image_files(Proxy.from_dict(proxy(root=str(tmp_path / "nowhere"))))


def test_labels_need_class_names():
    with pytest.raises(ValueError, match="'class_names'"):
        Proxy.from_json(json.dumps(proxy(class_names=None)))


def test_missing_and_unknown_fields_are_named():
    value = proxy(extra=1)
    del value["delta"]
    with pytest.raises(ValueError, match=r"missing fields \['delta'\], unexpected fields \['extra'\]"):
        Proxy.from_json(json.dumps(value))


def test_oversized_file_is_refused_unread(tmp_path):
    path = tmp_path / "proxy.json"
    with open(path, "wb") as handle:
        handle.truncate(2 << 30)  # sparse: nothing is stored or read
    with pytest.raises(ValueError, match="larger than"):
        Proxy.read(path)
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
        del value[draw(st.sampled_from(sorted(value)))]
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
        value = Proxy.from_json(raw)
    except ValueError:
        return
    assert Proxy.from_json(value.to_json()) == value
