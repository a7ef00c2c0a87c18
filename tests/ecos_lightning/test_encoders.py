"""Tests for ecos_lightning.encoders (CPU, offline)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from ecos_lightning.encoders import (
    FeatureEncoder,
    build_encoder,
    create_timm_model,
    extract_features,
    load_offline_efficientnet_lite0_state_dict,
    map_state_dict_by_position,
    spec_for_model,
)
from ecos_lightning.encoders.preprocess import preprocess, resize_normalise, to_nchw, to_unit_float
from ecos_lightning.protocol.encoder_spec import EncoderSpec

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """Tiny CPU workloads: one intra-op thread is fastest and robust to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _make_encoder(seed: int = 0, input_size: int = 32, **kw) -> FeatureEncoder:
    torch.manual_seed(seed)
    return build_encoder(EncoderSpec(weights="none", input_size=input_size, **kw), device="cpu")


@pytest.fixture(scope="module")
def enc() -> FeatureEncoder:
    return _make_encoder()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(11, 20, 20, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def offline_sd() -> dict[str, torch.Tensor]:
    return load_offline_efficientnet_lite0_state_dict()


class ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


# --------------------------------------------------------------------------- #
# Offline weights
# --------------------------------------------------------------------------- #
def test_offline_state_dict_matches_timm_keys_and_shapes(offline_sd):
    reference = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert len(offline_sd) == len(reference) == 296
    assert list(offline_sd) == list(reference)
    for k, v in reference.items():
        assert offline_sd[k].shape == v.shape, k
        assert offline_sd[k].dtype == v.dtype, k
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    result = model.load_state_dict(offline_sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Real weights, not the random init: BN running stats were trained.
    assert not torch.allclose(offline_sd["bn1.running_var"], torch.ones_like(offline_sd["bn1.running_var"]))


def test_map_state_dict_by_position_checks():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "bn.running_mean": torch.zeros(4)}
    source = {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2), "y.running_mean": torch.ones(4)}
    mapped = map_state_dict_by_position(source, target)
    assert list(mapped) == list(target)
    assert torch.equal(mapped["a.weight"], source["x.weight"])

    short = dict(list(source.items())[:2])
    with pytest.raises(ValueError, match="2 tensors.*3"):
        map_state_dict_by_position(short, target)
    bad_shape = {**source, "x.bias": torch.ones(3)}
    with pytest.raises(ValueError, match="shape mismatch.*x.bias"):
        map_state_dict_by_position(bad_shape, target)
    bad_kind = {"x.weight": torch.ones(2, 3), "x.running_var": torch.ones(2), "y.running_mean": torch.ones(4)}
    with pytest.raises(ValueError, match="kind mismatch"):
        map_state_dict_by_position(bad_kind, target)


def test_offline_weights_classify_chelsea_as_cat(enc):
    from skimage.data import chelsea

    photo = torch.from_numpy(chelsea())[None]  # uint8 [1, 300, 451, 3]
    model = create_timm_model("efficientnet_lite0", num_classes=1000, weights="offline").eval()
    for spec in (EncoderSpec(), spec_for_model("efficientnet_lite0")):  # bilinear and bicubic
        pre = build_encoder(EncoderSpec(**{**spec.to_dict(), "weights": "none"}), device="cpu")
        with torch.inference_mode():
            probs = model(pre.preprocess(photo)).softmax(-1)[0]
        top = probs.topk(3).indices.tolist()
        assert top[0] in CAT_CLASSES, top
        assert all(c in CAT_CLASSES for c in top), top  # top-3 are all cats
        assert probs[list(CAT_CLASSES)].sum() > 0.8


def test_offline_classifier_head_and_encoder_consistency(offline_sd):
    clf = create_timm_model("efficientnet_lite0", num_classes=10, weights="offline").eval()
    clf_sd = clf.state_dict()
    assert clf_sd["classifier.weight"].shape == (10, 1280)  # fresh head
    for k, v in offline_sd.items():
        if not k.startswith("classifier."):
            assert torch.equal(clf_sd[k], v), k

    encoder = build_encoder(EncoderSpec(input_size=64), device="cpu")
    assert encoder.feature_dim == 1280
    for k, v in encoder.model.state_dict().items():
        assert torch.equal(v, offline_sd[k]), k
    x = torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8)
    with torch.inference_mode():
        pixels = encoder.preprocess(x)
        pooled = clf.forward_head(clf.forward_features(pixels), pre_logits=True)
        feats = encoder(pixels)
    torch.testing.assert_close(feats, torch.nn.functional.normalize(pooled, dim=1))


# --------------------------------------------------------------------------- #
# Features
# --------------------------------------------------------------------------- #
def test_features_normalised_and_in_dataset_order(enc, images):
    feats = extract_features(enc, images, batch_size=4, progress=False)
    assert feats.dtype == np.float32 and feats.shape == (len(images), enc.feature_dim)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # distinct images give distinct features
    sims = feats @ feats.T
    assert (sims[~np.eye(len(images), dtype=bool)] < 0.9999).all()

    perm = np.random.default_rng(1).permutation(len(images))
    ds = ListDataset([(torch.from_numpy(images[j]), int(j)) for j in perm])
    feats_ds = extract_features(enc, ds, batch_size=3, progress=False)
    np.testing.assert_allclose(feats_ds, feats[perm], atol=1e-5)


def test_input_formats_give_same_features(enc, images):
    ref = extract_features(enc, images, batch_size=5, progress=False)
    t = torch.from_numpy(images)
    chw = t.permute(0, 3, 1, 2).contiguous()
    pil = [Image.fromarray(im) for im in images]
    variants = {
        "uint8 HWC tensor": t,
        "uint8 CHW tensor": chw,
        "float CHW tensor": chw.float() / 255,
        "uint8 CHW numpy": chw.numpy(),
        "PIL dataset": ListDataset(pil),
        "(PIL, label) dataset": ListDataset([(im, 0) for im in pil]),
        "list of PIL": pil,
        "numpy items": ListDataset(list(images)),
        "dict items": ListDataset([{"image": im, "label": 1} for im in pil]),
        "float CHW items": ListDataset([(x.float() / 255, 0) for x in chw]),
    }
    for name, data in variants.items():
        out = extract_features(enc, data, batch_size=4, progress=False)
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=name)
    workers = extract_features(enc, variants["(PIL, label) dataset"], batch_size=4, num_workers=2, progress=False)
    np.testing.assert_allclose(workers, ref, atol=1e-5)

    # A dataset that already applies pil_transform, flagged as preprocessed.
    tf = enc.pil_transform()
    pre = extract_features(enc, ListDataset([tf(im) for im in pil]), batch_size=4, progress=False, preprocessed=True)
    np.testing.assert_allclose(pre, ref, atol=1e-5)
    # ... and without the flag the out-of-range floats are refused with a pointer to it.
    with pytest.raises(ValueError, match="preprocessed=True"):
        extract_features(enc, ListDataset([tf(im) for im in pil]), progress=False)


def test_memory_format_and_cpu_sub_batches_do_not_change_features(enc, images):
    assert enc.channels_last  # default on CPU
    plain = FeatureEncoder(
        create_timm_model("efficientnet_lite0", num_classes=0, weights="none"), enc.spec, channels_last=False
    )
    plain.model.load_state_dict(enc.model.state_dict())
    assert not plain.channels_last
    many = np.concatenate([images] * 7)  # 77 images: more than one CPU sub-batch
    ref = extract_features(plain, many, batch_size=77, progress=False)
    np.testing.assert_allclose(extract_features(enc, many, batch_size=77, progress=False), ref, atol=1e-5)
    np.testing.assert_allclose(extract_features(enc, many, batch_size=5, progress=False), ref, atol=1e-5)


def test_grayscale_and_mixed_sizes(enc):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, size=(4, 18, 18), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(
        extract_features(enc, gray, progress=False), extract_features(enc, rgb, progress=False), atol=1e-5
    )
    sizes = [(20, 20), (37, 15), (64, 48), (8, 8), (32, 32)]
    pics = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in sizes]
    mixed = extract_features(enc, ListDataset(pics), batch_size=3, progress=False)
    singles = np.concatenate([extract_features(enc, [p], progress=False) for p in pics])
    np.testing.assert_allclose(mixed, singles, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, atol=1e-5)


def test_iterable_dataset(enc, images):
    class Stream(IterableDataset):
        def __iter__(self):
            for im in images:
                yield Image.fromarray(im), 0

    ref = extract_features(enc, images, progress=False)
    np.testing.assert_allclose(extract_features(enc, Stream(), batch_size=4, progress=False), ref, atol=1e-5)


def test_pil_transform_matches_preprocess(enc):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)  # non-square, larger than input
    tf = enc.pil_transform()
    out = tf(Image.fromarray(arr))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, enc.preprocess(torch.from_numpy(arr)[None])[0])
    # grayscale / RGBA PIL images are converted to RGB
    assert tf(Image.fromarray(arr[..., 0])).shape == (3, 32, 32)
    assert tf(Image.fromarray(np.dstack([arr, arr[..., :1]]), mode="RGBA")).shape == (3, 32, 32)
    pickle.loads(pickle.dumps(tf))  # usable in DataLoader workers


def test_preprocess_output(enc):
    spec = enc.spec
    up = enc.preprocess(torch.full((2, 3, 10, 10), 255, dtype=torch.uint8))
    assert up.shape == (2, 3, 32, 32) and up.dtype == torch.float32
    expected = (1 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    torch.testing.assert_close(up[0, :, 5, 5], expected)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        enc.preprocess(torch.full((1, 3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="preprocess"):
        enc(torch.zeros(1, 3, 20, 20))


LARGE_PREPROCESS = """
import resource, torch
from ecos_lightning.encoders.preprocess import preprocess
from ecos_lightning.protocol.encoder_spec import EncoderSpec
x = torch.randint(0, 256, (1, 6000, 6000, 3), dtype=torch.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = preprocess(x, EncoderSpec(input_size=224))
assert out.shape == (1, 3, 224, 224)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_large_uint8_image_is_shrunk_before_any_float_copy():
    """A 6000x6000 uint8 image (108 MB; 432 MB as float) grows a fresh process's peak memory by far less than
    one float copy of it, and gives nearly what resizing the float image gives."""
    result = subprocess.run([sys.executable, "-c", LARGE_PREPROCESS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 250, f"peak memory grew by {result.stdout.strip()} MB"
    spec = EncoderSpec(input_size=64)
    rows, cols = np.mgrid[:2100, :2300]
    smooth = np.stack([rows % 256, cols % 256, (rows + cols) // 20 % 256], -1).astype(np.uint8)[None]
    direct = resize_normalise(to_unit_float(to_nchw(torch.from_numpy(smooth))), 64, spec.interpolation,
                              torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1))
    torch.testing.assert_close(preprocess(smooth, spec), direct, atol=0.05, rtol=0)


# --------------------------------------------------------------------------- #
# EncoderSpec
# --------------------------------------------------------------------------- #
def test_spec_round_trip():
    for spec in (
        EncoderSpec(),
        EncoderSpec(name="resnet18", weights="none", input_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)),
        spec_for_model("efficientnet_lite0", input_size=96),
        EncoderSpec(weights="/some/where/weights.safetensors", interpolation="nearest"),
    ):
        d = json.loads(json.dumps(spec.to_dict()))
        assert EncoderSpec.from_dict(d) == spec
    assert EncoderSpec().mean == timm.data.IMAGENET_DEFAULT_MEAN
    assert EncoderSpec(mean=[0.1, 0.2, 0.3]).mean == (0.1, 0.2, 0.3)  # coerced to a tuple


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "vit_tiny_patch16_224"])
def test_for_model_matches_timm_data_config(name):
    weights = "offline" if name == "efficientnet_lite0" else "none"
    spec = spec_for_model(name, weights=weights)
    cfg = timm.data.resolve_model_data_config(timm.create_model(name, pretrained=False))
    assert spec.input_size == cfg["input_size"][-1]
    assert spec.mean == tuple(cfg["mean"]) and spec.std == tuple(cfg["std"])
    assert spec.interpolation == cfg["interpolation"]
    assert spec.weights == weights
    assert spec_for_model(name, weights=weights, input_size=64).input_size == 64


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", 3),
        ("name", ""),
        ("name", "bad name"),
        ("weights", None),
        ("weights", "ofline"),
        ("weights", "/tmp/weights.pkl"),
        ("input_size", "224"),
        ("input_size", True),
        ("input_size", 224.0),
        ("input_size", 2),
        ("input_size", 10**9),
        ("mean", [0.5, 0.5]),
        ("mean", "abc"),
        ("mean", [0.5, float("nan"), 0.5]),
        ("mean", [0.5, None, 0.5]),
        ("std", [0.5, 0.0, 0.5]),
        ("std", [0.5, -1.0, 0.5]),
        ("interpolation", "lanczos"),
        ("interpolation", 1),
    ],
)
def test_from_dict_rejects_bad_fields(field, value):
    d = EncoderSpec().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=field):
        EncoderSpec.from_dict(d)


def test_from_dict_rejects_unknown_missing_and_non_dict():
    d = EncoderSpec().to_dict()
    with pytest.raises(ValueError, match="unknown.*extra"):
        EncoderSpec.from_dict({**d, "extra": 1})
    del d["std"]
    with pytest.raises(ValueError, match="missing.*std"):
        EncoderSpec.from_dict(d)
    with pytest.raises(ValueError, match="dict"):
        EncoderSpec.from_dict([("name", "efficientnet_lite0")])
    # offline weights exist only for efficientnet_lite0
    with pytest.raises(ValueError, match="offline.*hub"):
        EncoderSpec.from_dict({**EncoderSpec().to_dict(), "name": "resnet18"})


# --------------------------------------------------------------------------- #
# Errors and weights files
# --------------------------------------------------------------------------- #
def test_clear_errors(tmp_path, enc):
    with pytest.raises(ValueError, match=r"efficientnet_lite00.*list_models"):
        build_encoder(EncoderSpec(name="efficientnet_lite00", weights="none"), device="cpu")
    with pytest.raises(ValueError, match="not_a_model"):
        build_encoder("not_a_model", device="cpu")
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_encoder(EncoderSpec(weights=str(missing)), device="cpu")
    with pytest.raises(ValueError, match="offline.*hub.*none"):
        create_timm_model("resnet18", num_classes=0, weights="offline")
    with pytest.raises(ValueError, match="offline"):
        build_encoder("resnet18", device="cpu")
    with pytest.raises(ValueError, match="empty"):
        extract_features(enc, np.empty((0, 32, 32, 3), dtype=np.uint8), progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_features(enc, [], progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_features(enc, ListDataset([]), progress=False)
    with pytest.raises(TypeError):
        extract_features(enc, 42, progress=False)


def test_non_finite_features_are_rejected(images):
    bad = _make_encoder(seed=5)
    with torch.no_grad():
        bad.model.conv_stem.weight[0].fill_(float("nan"))
    with pytest.raises(ValueError, match="Non-finite"):
        extract_features(bad, images, progress=False)


def test_local_weights_files(tmp_path, images):
    from safetensors.torch import save_file

    src = _make_encoder(seed=7)
    other = _make_encoder(seed=8)
    ref = extract_features(src, images, progress=False)
    assert not np.allclose(ref, extract_features(other, images, progress=False), atol=1e-3)

    sd = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    st_path, pth_path = tmp_path / "enc.safetensors", tmp_path / "enc.pth"
    save_file(sd, str(st_path))
    torch.save(sd, str(pth_path))
    for path in (st_path, pth_path):
        loaded = build_encoder(EncoderSpec(weights=str(path), input_size=32), device="cpu")
        np.testing.assert_allclose(extract_features(loaded, images, progress=False), ref, atol=1e-6)

    # A full 1000-class checkpoint: the head is dropped for the encoder, kept for a 1000-class model.
    torch.manual_seed(9)
    full = create_timm_model("efficientnet_lite0", num_classes=1000, weights="none")
    full_path = tmp_path / "full.pt"
    torch.save({"state_dict": full.state_dict()}, str(full_path))
    from_full = build_encoder(EncoderSpec(weights=str(full_path), input_size=32), device="cpu")
    for k, v in from_full.model.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k
    again = create_timm_model("efficientnet_lite0", num_classes=1000, weights=str(full_path))
    assert torch.equal(again.classifier.weight, full.classifier.weight)

    # Weights of another architecture do not fit.
    wrong = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18", num_classes=0).state_dict().items()},
              str(wrong))
    with pytest.raises(ValueError, match="do not fit"):
        build_encoder(EncoderSpec(weights=str(wrong), input_size=32), device="cpu")
    # A truncated backbone is refused too (strict on everything but the head).
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("bn2.")}, str(partial))
    with pytest.raises(ValueError, match="missing.*bn2"):
        build_encoder(EncoderSpec(weights=str(partial), input_size=32), device="cpu")


def test_encoder_is_frozen_and_eval(enc, images):
    assert isinstance(enc, torch.nn.Module)
    assert all(not p.requires_grad for p in enc.parameters())
    assert not enc.training and not any(m.training for m in enc.modules())
    assert enc.device == torch.device("cpu")
    assert build_encoder(EncoderSpec(weights="none", input_size=32)).device.type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )

    # Calling train() (e.g. from a parent LightningModule) keeps it in eval mode.
    parent = torch.nn.Sequential(enc, torch.nn.Linear(enc.feature_dim, 2))
    parent.train()
    assert parent[1].training
    assert not enc.training and not any(m.training for m in enc.modules())
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.inference_mode():
        enc(enc.preprocess(torch.from_numpy(images)))
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_style_pooling_separates_domains_better_than_avg_pooling():
    """Style statistics put images of the same digits-lite domain next to each other."""
    import faiss

    from ecos_lightning.data import load_digits_lite

    data = load_digits_lite()
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(data.domains == k), 60, replace=False) for k in range(5)])
    purity = {}
    for pooling in ("avg", "style"):
        spec = spec_for_model("efficientnet_lite0", input_size=64, pooling=pooling)
        feats = extract_features(build_encoder(spec, device="cpu"), data.images[idx], progress=False)
        assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)
        _, nn = faiss.knn(feats, feats, 6)
        purity[pooling] = (data.domains[idx][nn[:, 1:]] == data.domains[idx][:, None]).mean()
    assert purity["style"] >= 0.9 and purity["style"] > purity["avg"]


def test_pooling_is_validated_and_travels_in_the_spec():
    spec = spec_for_model("efficientnet_lite0", input_size=64, pooling="style")
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="pooling"):
        EncoderSpec.from_dict(dict(spec.to_dict(), pooling="max"))


def test_random_weights_warn_that_their_features_carry_no_meaning():
    with pytest.warns(UserWarning, match="random weights .* no better than random"):
        build_encoder(EncoderSpec(name="resnet10t", weights="none", input_size=32), device="cpu")
