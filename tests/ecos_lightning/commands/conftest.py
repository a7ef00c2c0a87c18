"""Small image folders for the command tests: three colour "domains" of circles and squares."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
SHAPES = ("circle", "square")
ENCODER_ARGS = ["--input-size", "32"]


def draw(domain: str, shape: str, size: int, rng) -> Image.Image:
    """A ``size`` x ``size`` RGB image: a light shape on the domain's (jittered) background colour."""
    background = np.clip(np.array(COLOURS[domain]) + rng.integers(-30, 30, 3), 0, 255)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    margin = size // 5 + int(rng.integers(0, 3))
    box = [margin, margin, size - margin, size - margin]
    (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=(240, 240, 240))
    return image


def write_folders(root: Path) -> dict[str, Path]:
    """open/: 3 domains x 20 images (24 and 40 px, png and jpg, nested); client/: 20 green images in
    nested folders plus one corrupt file; labelled/: green images in circle/ and square/ class folders."""
    rng = np.random.default_rng(0)
    for domain in COLOURS:
        for i in range(20):
            path = root / "open" / domain / (f"{i:02d}.png" if i % 3 else f"sub/{i:02d}.jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            draw(domain, SHAPES[i % 2], (24, 40)[i // 2 % 2], rng).save(path)
    for i in range(20):
        path = root / "client" / (f"a/{i}.png" if i % 2 else f"b/c/{i}.jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        draw("green", SHAPES[i % 2], (24, 40)[i % 3 == 0], rng).save(path)
        path = root / "labelled" / SHAPES[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw("green", SHAPES[i % 2], 32, rng).save(path)
    (root / "client" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return {name: root / name for name in ("open", "client", "labelled")}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime_ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cli(capsys):
    """``cli(main, *argv)`` runs a command in-process: (exit status, stdout, stderr)."""
    def call(main, *argv) -> tuple[int, str, str]:
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err
    return call


@pytest.fixture(scope="session")
def tree():
    """``tree(folder)``: every file under it, relative path -> (size, mtime_ns)."""
    return snapshot


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    return write_folders(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def probed(folders, tmp_path_factory) -> Path:
    """A cloud folder after ``probe`` (K=6): centroids.ecos and cloud_state/."""
    from ecos_lightning.commands import cloud

    work = tmp_path_factory.mktemp("cloud")
    cloud.main(["probe", "--open", str(folders["open"]), "--out", str(work / "centroids.ecos"),
                "--num-clusters", "6", *ENCODER_ARGS])
    return work


#: Proxy size of the ``sampled`` fixture.
SAMPLED_BUDGET = 24


@pytest.fixture(scope="module")
def sampled_once(probed, folders, tmp_path_factory):
    """A cloud folder with proxy.json and a client ledger holding the ECOS scores' release (made once)."""
    from ecos_lightning.commands import client, cloud

    work = tmp_path_factory.mktemp("coverage")
    client.main(["respond", "--centroids", str(probed / "centroids.ecos"), "--data", str(folders["client"]), "--out",
                 str(work / "scores.ecos"), "--ledger", str(work / "ledger.json")])
    cloud.main(["sample", "--scores", str(work / "scores.ecos"), "--budget", str(SAMPLED_BUDGET), "--out",
                str(work / "proxy.json"), "--state", str(probed / "cloud_state")])
    return work


@pytest.fixture
def sampled(sampled_once, tmp_path):
    """(cloud folder with proxy.json, client folder with scores.ecos and ledger.json), fresh copies per test."""
    cloud_dir, client_dir = tmp_path / "cloud", tmp_path / "client"
    cloud_dir.mkdir()
    client_dir.mkdir()
    shutil.copy(sampled_once / "proxy.json", cloud_dir)
    for name in ("scores.ecos", "ledger.json"):
        shutil.copy(sampled_once / name, client_dir)
    return cloud_dir, client_dir
