"""The one parser of source names and the opener of image folders."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecos_lightning.data import DigitsLiteSource, FolderSource, PathImageDataset, open_source, parse_source
from ecos_lightning.files import stable_hash


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
    files = [(p, (tmp_path / p).stat().st_size, (tmp_path / p).stat().st_mtime_ns) for p in data.paths]
    assert data.data_id == stable_hash([str(tmp_path.resolve()), files])
