"""The one parser of source names and the opener of image folders."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecos_lightning.data import DigitsLiteSource, FolderSource, PathImageDataset, open_source, parse_source
from ecos_lightning.files import file_stamp, stable_hash


@pytest.mark.parametrize("name,source", [
    ("digits-lite", DigitsLiteSource("handwritten", 0)),
    ("digits-lite:street", DigitsLiteSource("street", 0)),
    ("digits-lite:street:7", DigitsLiteSource("street", 7)),
    ("pool/images", FolderSource(Path("pool/images"))),
    ("digits-lite-photos", FolderSource(Path("digits-lite-photos"))),
])
def test_source_names(name, source):
    assert parse_source(name) == source


@pytest.mark.parametrize("name", ["digits-lite:street:x", "digits-lite:street:-1", "digits-lite:street:²", ""])
def test_malformed_source_names_are_refused(name):
    with pytest.raises(ValueError):
        parse_source(name)


def test_an_image_folder_opens_as_a_pool_of_its_readable_images(tmp_path):
    for i, sub in enumerate(["b", "a/c", "a"]):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 5, 3), i * 40, np.uint8)).save(tmp_path / sub / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    data = open_source(parse_source(str(tmp_path)), progress=False)
    assert data.paths == ["a/2.png", "a/c/1.png", "b/0.png"] and data.root == str(tmp_path.resolve())
    assert [p.name for p in data.skipped] == ["broken.png"] and data.client is None and data.client_test is None
    assert isinstance(data.open, PathImageDataset) and data.open.labels.tolist() == [-1, -1, -1]
    image, label = data.open[0]
    assert image.mode == "RGB" and image.size == (5, 6) and label == -1
    files = [(p, *file_stamp(tmp_path / p)) for p in data.paths]
    assert data.data_id == stable_hash([str(tmp_path.resolve()), files])


# --------------------------------------------------------------------------- published datasets by name
from published_formats import write_digits5, write_domain_folders, write_domainnet, write_image  # noqa: E402

from ecos_lightning.data import (DIGITS5_DOMAINS, DOMAINNET_DOMAINS, OFFICE_CALTECH10_DOMAINS,  # noqa: E402
                                 PAPER_CLASSES, ArrayImageDataset, Digits5Source, DomainFoldersSource,
                                 DomainNetSource)


@pytest.mark.parametrize("name,source", [
    ("domainnet:/data/dn", DomainNetSource(Path("/data/dn"))),
    ("domainnet:client=real:seed=2:/data/dn", DomainNetSource(Path("/data/dn"), "real", 2)),
    ("domainnet:classes=bird,zebra:/mnt/c:weird/dn",
     DomainNetSource(Path("/mnt/c:weird/dn"), classes=("bird", "zebra"))),
    ("domainnet:classes=all:rule=digits:domains=real,sketch:client=sketch:dn",
     DomainNetSource(Path("dn"), "sketch", rule="digits", domains=("real", "sketch"), classes=None)),
    ("digits5:client=svhn:size=28:allow_pickle=true:/d:5", Digits5Source(Path("/d:5"), "svhn", size=28,
                                                                         allow_pickle=True)),
    ("digits5:rule=domainnet:seed=3:d", Digits5Source(Path("d"), rule="domainnet", seed=3)),
    ("digits5:domains=svhn,usps:d", Digits5Source(Path("d"), "svhn", domains=("svhn", "usps"))),
    ("office-caltech10:domains=dslr,webcam:o", DomainFoldersSource(Path("o"), "dslr", domains=("dslr", "webcam"),
                                                                  kind="office-caltech10")),
    ("office-caltech10:/o", DomainFoldersSource(Path("/o"), "amazon", domains=OFFICE_CALTECH10_DOMAINS,
                                                kind="office-caltech10")),
    ("folders:client=photos:rule=digits:/x", DomainFoldersSource(Path("/x"), "photos", rule="digits")),
    ("folders:./a=b:c", DomainFoldersSource(Path("./a=b:c"))),
    ("imagefolder:seed=3:/x", DomainFoldersSource(Path("/x"), seed=3, layout="classes", kind="imagefolder")),
    ("C:\\data", FolderSource(Path("C:\\data"))),
    ("domainnet", FolderSource(Path("domainnet"))),
    ("folders-2024:/a", FolderSource(Path("folders-2024:/a"))),
])
def test_published_dataset_names(name, source):
    assert parse_source(name) == source


@pytest.mark.parametrize("name,problem", [
    ("domainnet:", "data folder is missing"),
    ("domainnet:client=real", "data folder is missing after the options"),
    ("domainnet:seed=x:/d", "seed must be a non-negative integer"),
    ("domainnet:size=3:/d", "unknown key 'size'; domainnet takes"),
    ("domainnet:seed=1:seed=2:/d", "seed is given twice"),
    ("domainnet:client=kitchen:/d", "client domain 'kitchen' is not among"),
    ("domainnet:classes=a,,b:/d", "comma-separated names"),
    ("digits5:rule=half:/d", "rule must be one of"),
    ("digits5:size=0:/d", "size must be a positive integer"),
    ("digits5:allow_pickle=maybe:/d", "allow_pickle must be true or false"),
    ("digits5:client=mnist:domains=svhn,usps:/d", "client domain 'mnist' is not among"),
    ("imagefolder:client=x:/d", "unknown key 'client'"),
])
def test_malformed_published_names_are_refused_with_the_problem(name, problem):
    with pytest.raises(ValueError, match=problem):
        parse_source(name)


@pytest.fixture(scope="module")
def digits5_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits5")
    write_digits5(root, n_train=20, n_test=10)
    return root


def test_digits5_by_the_digits_rule(digits5_root):
    data = open_source(parse_source(f"digits5:client=usps:seed=1:{digits5_root}"))
    usps = DIGITS5_DOMAINS.index("usps")
    for ds in (data.open, data.client, data.client_test):
        assert isinstance(ds, ArrayImageDataset) and ds.domain_names == DIGITS5_DOMAINS and ds.num_classes == 10
    assert data.client.domain_counts()["usps"] == 20 and len(data.client) == 20  # its whole train split
    assert len(data.client_test) == 10 and np.all(data.client_test.domains == usps)  # its official test split
    assert data.open.domain_counts() == {d: 0 if d == "usps" else 20 for d in DIGITS5_DOMAINS}  # others' train
    assert data.domain_names == DIGITS5_DOMAINS and data.client_domain == "usps"
    assert data.root is None and data.paths is None
    assert data.data_id.startswith("digits5/usps/digits/seed1/")
    image, label = data.open[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and 0 <= label <= 9


def test_digits5_by_the_domainnet_rule_is_seeded(digits5_root):
    def open_(seed):
        return open_source(parse_source(f"digits5:rule=domainnet:seed={seed}:{digits5_root}"))

    a, b, c = open_(1), open_(1), open_(2)
    assert len(a.client) == 10 and len(a.client_test) == 10 and len(a.open) == 4 * 20 + 10
    assert np.array_equal(a.client.images, b.client.images) and a.data_id == b.data_id
    assert not np.array_equal(a.client.images, c.client.images) and a.data_id != c.data_id


def test_the_data_id_follows_the_files(tmp_path):
    write_digits5(tmp_path, n_train=4, n_test=2)
    name = f"digits5:{tmp_path}"
    first = open_source(parse_source(name)).data_id
    assert open_source(name).data_id == first  # a name opens as its record does
    label_file = tmp_path / "mnist_m" / "mnist_m_test_labels.txt"
    label_file.write_text(label_file.read_text().replace("00000001.png 2", "00000001.png 3"))
    assert open_source(parse_source(name)).data_id != first


@pytest.fixture(scope="module")
def domainnet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("domainnet")
    write_domainnet(root, DOMAINNET_DOMAINS, PAPER_CLASSES, n_train=4, n_test=2)
    return root


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_domainnet_by_the_domainnet_rule(domainnet_root, seed):
    data = open_source(parse_source(f"domainnet:client=real:seed={seed}:{domainnet_root}"))
    assert len(data.client) == 10 * 2 and np.all(data.client.labels.reshape(-1) >= 0)
    assert np.array_equal(np.bincount(data.client.labels), np.full(10, 2))  # half of each class's train split
    assert data.client_test.domain_counts()["real"] == 20 and len(data.client_test) == 20
    assert data.open.domain_counts() == {d: 20 if d == "real" else 40 for d in DOMAINNET_DOMAINS}
    client, pool = {p for p in data.client.paths}, {p for p in data.open.paths}
    assert not client & pool and not {p for p in data.client_test.paths} & (client | pool)
    assert data.root == str(domainnet_root.resolve()) and len(data.paths) == len(data.open)
    assert all((domainnet_root / p).is_file() and "_test" not in p for p in data.paths)
    again = open_source(parse_source(f"domainnet:client=real:seed={seed}:{domainnet_root}"))
    assert again.client.paths == data.client.paths and again.data_id == data.data_id
    other = open_source(parse_source(f"domainnet:client=real:seed={seed + 1}:{domainnet_root}"))
    assert other.client.paths != data.client.paths


def test_a_missing_domainnet_file_is_one_line_naming_it(domainnet_root, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        open_source(parse_source(f"domainnet:{tmp_path}"))
    assert str(err.value).count("\n") == 0 and "clipart_train.txt" in str(err.value) and str(tmp_path) in str(
        err.value)


def test_office_caltech10_and_any_domain_folders(tmp_path):
    counts = {"amazon": {"mug": 6, "bike": 4}, "caltech": {"mug": 4, "laptop": 4}, "dslr": {"bike": 4},
              "webcam": {"bike": 2, "mug": 4}}
    write_domain_folders(tmp_path / "oc", counts)
    (tmp_path / "oc" / "dslr" / "bike" / "broken.png").write_bytes(b"not an image")
    data = open_source(parse_source(f"office-caltech10:client=caltech:seed=1:{tmp_path / 'oc'}"), progress=False)
    assert data.open.class_names == ("bike", "laptop", "mug") and data.domain_names == OFFICE_CALTECH10_DOMAINS
    for ds in (data.open, data.client, data.client_test):
        for path, label in zip(ds.paths, ds.labels):
            assert path.parent.name == ds.class_names[label]  # one label per class name in every domain
    # rule domainnet without an official test split: half of each caltech class (2 of 4), 30% of it (1) held out
    assert (len(data.client), len(data.client_test), len(data.open)) == (2, 2, 10 + 4 + 4 + 6)
    assert data.client_test.domain_counts()["caltech"] == 2 and data.open.domain_counts()["caltech"] == 4
    assert [p.name for p in data.skipped] == ["broken.png"]

    digits_rule = open_source(parse_source(f"folders:client=webcam:rule=digits:{tmp_path / 'oc'}"), progress=False)
    assert digits_rule.domain_names == ("amazon", "caltech", "dslr", "webcam")
    assert len(digits_rule.client) + len(digits_rule.client_test) == 6 and len(digits_rule.open) == 22
    assert set(digits_rule.open.domain_counts().items()) >= {("webcam", 0)}


def test_domain_folders_errors_and_the_office31_layout(tmp_path):
    write_domain_folders(tmp_path / "o31" / "amazon" / "images", {"": {"bike": 4, "mug": 4}})
    write_domain_folders(tmp_path / "o31", {"dslr": {"bike": 2, "mug": 2}})
    data = open_source(parse_source(f"folders:{tmp_path / 'o31'}"), progress=False)
    assert data.client_domain == "amazon" and data.open.class_names == ("bike", "mug")
    assert len(data.open) + len(data.client) + len(data.client_test) == 12
    with pytest.raises(FileNotFoundError, match=f"domain folder 'caltech' not found in {tmp_path / 'o31'}"):
        open_source(parse_source(f"office-caltech10:{tmp_path / 'o31'}"), progress=False)


def test_a_single_class_folder_tree(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(10):
            write_image(tmp_path / "pets" / cls / f"{i}.png", i, grey=True)
    data = open_source(parse_source(f"imagefolder:seed=2:{tmp_path / 'pets'}"), progress=False)
    assert data.domain_names == ("pets",) and data.open.class_names == ("cat", "dog")
    assert (len(data.client), len(data.client_test), len(data.open)) == (6, 4, 10)
    image, _ = data.client[0]
    assert image.mode == "RGB"


def test_digits_lite_datasets_carry_domains_and_class_names():
    data = open_source(parse_source("digits-lite:street:1"))
    assert data.client_domain == "street" and data.domain_names == data.open.domain_names
    assert data.open.num_classes == 10 and np.all(data.client.domains == data.domain_names.index("street"))
