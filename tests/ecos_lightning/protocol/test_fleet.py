"""A fleet's noise, the sensitivity of its summed answer, and the cloud's checks of the answers it sees."""

import numpy as np
import pytest

from ecos_lightning.protocol import CentroidsMessage, ClientResponder, ScoresMessage
from ecos_lightning.protocol.fleet import SECAGG_CLIP, FleetPrivacy, sum_answers
from ecos_lightning.protocol.privacy import releases_epsilon, skellam_sum_release


def _centroids(rng, k=12, d=8):
    return CentroidsMessage(rng.normal(size=(k, d)).astype(np.float32))


@pytest.mark.parametrize("q", [1, 3])
def test_one_image_of_one_device_changes_the_sum_by_at_most_the_declared_sensitivity(q):
    """Random data: removing any one image of any device changes the summed answer by q ones (L1 q, L2 sqrt(q))."""
    rng = np.random.default_rng(q)
    centroids = _centroids(rng)
    fleet = [rng.normal(size=(int(rng.integers(3, 30)), 8)).astype(np.float32) for _ in range(6)]
    privacy = FleetPrivacy(noise_multiplier=2.0, threshold=4)

    def total(devices):
        counts = [ClientResponder(0.0, q).coverage(centroids, f).astype(np.int64) for f in devices]
        return sum(privacy.answer(c, q, np.random.default_rng([0, i])) for i, c in enumerate(counts))

    base = total(fleet)
    for _ in range(20):
        device = int(rng.integers(len(fleet)))
        image = int(rng.integers(len(fleet[device])))
        less = [f if i != device else np.delete(f, image, axis=0) for i, f in enumerate(fleet)]
        diff = base - total(less)
        assert set(np.unique(diff)) <= {0.0, 1.0} and diff.sum() == q and np.linalg.norm(diff) == pytest.approx(q ** 0.5)


def test_each_device_releases_its_own_record_and_the_sum_carries_the_target_noise():
    secure, local = FleetPrivacy(8.0, True, 10, 2), FleetPrivacy(8.0, False, 10)
    assert secure.release(1) == skellam_sum_release(8.0, 1, 8, "fleet coverage")
    assert secure.sum_noise_std(8, 1) == pytest.approx(8.0)  # the honest shares alone: the target sigma
    assert secure.sum_noise_std(30, 1) == pytest.approx(8.0 * (30 / 8) ** 0.5)
    assert local.sum_noise_std(30, 1) == pytest.approx(8.0 * 30 ** 0.5)
    assert releases_epsilon([local.release(1)], 1e-5) > releases_epsilon([secure.release(1)], 1e-5) * 0.99
    with pytest.raises(ValueError, match="colluding must be an integer in"):
        FleetPrivacy(8.0, True, 3, 3)
    with pytest.raises(ValueError, match="secure aggregation range"):
        secure.answer(np.array([SECAGG_CLIP]), 1, np.random.default_rng(0))


def test_the_cloud_refuses_each_hostile_answer_with_one_line_and_sums_the_rest():
    rng = np.random.default_rng(0)
    centroids = _centroids(rng)
    digest = centroids.digest()

    def message(scores, answers=digest):
        return ScoresMessage(np.asarray(scores, np.float32), 8.0, 1, 1e-5, 0.4, answers).to_bytes()

    good = message(np.arange(12) + 0.5)
    nan = bytearray(message(np.full(12, 1.5)))
    at = nan.rindex(np.float32(1.5).tobytes())
    nan[at:at + 4] = np.float32(np.nan).tobytes()
    blobs = {"a": good, "b": message(np.ones(12)), "c": bytes(nan), "d": message(np.ones(11)),
             "e": message(np.ones(12), "0" * 64), "f": good, "g": b"not a message"}
    total, refused = sum_answers(blobs, digest, 12)
    np.testing.assert_allclose(total, np.arange(12) + 1.5)
    assert sorted(refused) == ["c", "d", "e", "f", "g"]
    assert "replays an answer" in refused["f"] and "another round" in refused["e"] and "11 scores" in refused["d"]
    assert "not a scores message" in refused["c"] and all("\n" not in line for line in refused.values())
