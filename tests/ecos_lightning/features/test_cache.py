import numpy as np

from ecos_lightning.features import cache as features
from ecos_lightning.encoders import spec_for_model


def test_features_are_cached_per_spec_and_data_id(tmp_path, monkeypatch):
    calls = []
    real_build = features.build_encoder

    def counting_build(spec, device=None):
        calls.append(spec)
        return real_build(spec, device="cpu")

    monkeypatch.setattr(features, "build_encoder", counting_build)
    images = np.random.default_rng(0).integers(0, 255, size=(6, 16, 16, 3), dtype=np.uint8)
    spec = spec_for_model("efficientnet_lite0", weights="none", input_size=16)
    first = features.cached_features(spec, images, "toy", tmp_path, progress=False)
    again = features.cached_features(spec, images, "toy", tmp_path, progress=False)
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1 and first.shape[0] == 6
    features.cached_features(spec, images, "other", tmp_path, progress=False)
    assert len(calls) == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    spec = spec_for_model("efficientnet_lite0", weights="offline", input_size=16)
    first = np.array(features.cached_features(spec, images, "toy", tmp_path, progress=False))  # off the file
    (cache,) = tmp_path.glob("features-*.npy")
    cache.write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(features.cached_features(spec, images, "toy", tmp_path, progress=False), first)


def test_extraction_leaves_the_global_torch_random_stream_alone(tmp_path):
    import torch

    images = [np.full((16, 16, 3), 40 * i, dtype=np.uint8) for i in range(3)]  # a sequence: read by a DataLoader
    spec = spec_for_model("efficientnet_lite0", weights="none", input_size=16)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    features.cached_features(spec, images, "toy", tmp_path, progress=False)  # builds the encoder, extracts
    assert torch.equal(torch.get_rng_state(), before)
