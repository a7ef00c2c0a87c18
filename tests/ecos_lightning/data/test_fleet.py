"""fleet_split and the digits-lite-fleet source: devices of a few images each, from one or more domains."""

import numpy as np
import pytest

from ecos_lightning.data.fleet import fleet_split
from ecos_lightning.data.sources import DigitsLiteFleetSource, parse_source

NAMES = ("a", "b", "c")
DOMAINS = np.repeat([0, 1, 2], [300, 100, 50])


def test_the_devices_their_held_out_images_and_the_pool_are_disjoint_and_cover_the_data():
    split = fleet_split(DOMAINS, [("a", 10), ("b", 2)], NAMES, per_device=20, seed=3)
    assert len(split.devices) == 12 and all(len(d) == 20 for d in split.devices)
    assert split.device_domains == ("a",) * 10 + ("b",) * 2
    assert all(np.all(DOMAINS[d] == (0 if i < 10 else 1)) for i, d in enumerate(split.devices))
    assert len(split.test_indices) == round(200 * 0.3 / 0.7) + round(40 * 0.3 / 0.7)
    parts = [*split.devices, split.test_indices, split.open_indices]
    every = np.concatenate(parts)
    assert len(every) == len(np.unique(every)) == len(DOMAINS)
    assert np.all(DOMAINS[split.open_indices[-50:]] == 2)  # an unnamed domain is all pool
    again = fleet_split(DOMAINS, [("a", 10), ("b", 2)], NAMES, per_device=20, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(parts, [*again.devices, again.test_indices, again.open_indices]))
    other = fleet_split(DOMAINS, [("a", 10), ("b", 2)], NAMES, per_device=20, seed=4)
    assert not np.array_equal(other.devices[0], split.devices[0])


@pytest.mark.parametrize("groups, per_device, message", [
    ([("a", 20)], 20, "domain 'a' holds 300 images, fewer than 20 devices x 20 images plus 171 held out"),
    ([("z", 1)], 20, "fleet domain 'z' is unknown; valid: a, b, c"),
    ([("a", 1), ("a", 2)], 20, "names each domain once"),
    ([], 20, "at least one"),
    ([("a", 0)], 20, "device count must be a positive integer"),
    ([("a", 1)], 0, "images per device must be a positive integer")])
def test_a_fleet_the_data_cannot_hold_is_one_clear_error(groups, per_device, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        fleet_split(DOMAINS, groups, NAMES, per_device=per_device)


def test_the_source_name_of_a_digits_lite_fleet():
    assert parse_source("digits-lite-fleet:handwritten=30,printed=3") == \
        DigitsLiteFleetSource((("handwritten", 30), ("printed", 3)), 20, 0)
    assert parse_source("digits-lite-fleet:street=5:12:2") == DigitsLiteFleetSource((("street", 5),), 12, 2)
    for bad in ("digits-lite-fleet:", "digits-lite-fleet:handwritten", "digits-lite-fleet:handwritten=x",
                "digits-lite-fleet:handwritten=3:a", "digits-lite-fleet:handwritten=3:1:2:3"):
        with pytest.raises(ValueError, match="write digits-lite-fleet:<domain>=<devices>"):
            parse_source(bad)
