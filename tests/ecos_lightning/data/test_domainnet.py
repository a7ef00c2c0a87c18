"""DomainNet read from its published layout: images on disk, official split files, the paper's classes."""

import numpy as np
import pytest
from published_formats import write_domainnet

from ecos_lightning.data import DOMAINNET_DOMAINS, PAPER_CLASSES, PathImageDataset, load_domainnet

EXTRA = ("aircraft_carrier", "zigzag")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("domainnet")
    write_domainnet(root, DOMAINNET_DOMAINS, PAPER_CLASSES + EXTRA, n_train=3, n_test=2)
    return root


def test_the_paper_classes_by_default_relabelled_in_their_order(root):
    data = load_domainnet(root)
    items = data.items
    assert isinstance(items, PathImageDataset)
    assert items.class_names == PAPER_CLASSES and items.domain_names == DOMAINNET_DOMAINS
    assert len(items) == 6 * 10 * 5 and data.test_mask.sum() == 6 * 10 * 2
    assert items.domain_counts() == {d: 50 for d in DOMAINNET_DOMAINS}
    for path, label, domain in zip(items.paths, items.labels, items.domains):
        assert path.parts[-3:-1] == (DOMAINNET_DOMAINS[domain], PAPER_CLASSES[label])
    assert all(("_test" in p.name) == t for p, t in zip(items.paths, data.test_mask))
    assert {f.name for f in data.files} >= {f"{d}_{s}.txt" for d in DOMAINNET_DOMAINS for s in ("train", "test")}


def test_images_stay_on_disk_and_grey_domains_come_out_rgb(root):
    items = load_domainnet(root, domains=("quickdraw", "real"), classes=("zebra", "bird")).items
    # zebra is label 0 as asked; items keep the split files' order (train bird, zebra; test bird, zebra)
    assert items.labels.tolist() == 2 * ([1] * 3 + [0] * 3 + [1] * 2 + [0] * 2)
    image, label = items[3]
    assert image.mode == "RGB" and image.size == (8, 8) and label == 0
    value = 10 * sorted(PAPER_CLASSES + EXTRA).index("zebra")
    assert np.abs(np.asarray(image, np.int16) - value).max() <= 3  # the zebra file (JPEG rounding)
    assert items.domains.tolist() == [0] * 10 + [1] * 10 and items.domain_names == ("quickdraw", "real")


def test_every_class_in_official_index_order(root):
    items = load_domainnet(root, domains=("sketch",), classes=None).items
    assert items.class_names == tuple(sorted(PAPER_CLASSES + EXTRA))
    assert items.num_classes == 12 and len(items) == 12 * 5


def test_missing_split_file_image_and_class_are_named(tmp_path):
    write_domainnet(tmp_path, ("clipart", "real"), ("bird", "zebra"), n_train=2, n_test=1)
    (tmp_path / "real_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=f"split file real_test.txt not found in {tmp_path}:"):
        load_domainnet(tmp_path, domains=("clipart", "real"), classes=("bird",))
    image = tmp_path / "clipart" / "zebra" / "clipart_001_train01.jpg"
    image.unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_domainnet(tmp_path, domains=("clipart",), classes=("bird", "zebra"))
    assert "clipart/zebra/clipart_001_train01.jpg" in str(err.value) and str(tmp_path) in str(err.value)
    assert "1 of 6 listed images missing" in str(err.value)
    assert len(load_domainnet(tmp_path, domains=("clipart",), classes=("bird",)).items) == 3
    with pytest.raises(ValueError, match=r"classes \['tiger'\] are listed in no split file"):
        load_domainnet(tmp_path, domains=("clipart",), classes=("bird", "tiger"))
    with pytest.raises(FileNotFoundError, match="DomainNet folder not found"):
        load_domainnet(tmp_path / "absent")


def test_a_malformed_split_line_is_named(tmp_path):
    write_domainnet(tmp_path, ("clipart",), ("bird",), n_train=1, n_test=1)
    (tmp_path / "clipart_train.txt").write_text("clipart/bird/x.jpg\n")
    with pytest.raises(ValueError, match="clipart_train.txt line 1: expected"):
        load_domainnet(tmp_path, domains=("clipart",), classes=("bird",))
