"""The fleet's secure round deployed on localhost: a SuperLink, three SuperNodes and ``flwr run`` as separate
processes; and a device refusing a hostile round before it reads or records anything."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ecos_lightning.client.ledger import read_ledger
from ecos_lightning.protocol import CentroidsMessage, ScoresMessage

DEVICES, IMAGES_PER_DEVICE, NOISE = 3, 6, 2.0
BUDGET = 2.0  # each device's epsilon budget: one round at NOISE costs about 1.5, a second one passes it
DEPLOYMENT_TIMEOUT_S = 540
VENV_BIN = Path(sys.executable).parent


def draw_folder(folder: Path, count: int, colour: tuple[int, int, int], seed: int) -> Path:
    """``count`` 32 px images: a light circle or square on a jittered ``colour`` background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        background = tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-30, 30, 3), 0, 255))
        image = Image.new("RGB", (32, 32), background)
        shape = ImageDraw.Draw(image).ellipse if i % 2 else ImageDraw.Draw(image).rectangle
        shape([6, 6, 26, 26], fill=(240, 240, 240))
        image.save(folder / f"{i:02d}.png")
    return folder


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Flower detaches its SuperExec into a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def stop(processes: list[subprocess.Popen]) -> None:
    """Kill each process we started and everything it started, by id."""
    for proc in processes:
        for pid in [*descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)


def run_command(side: str, *argv) -> str:
    proc = subprocess.run([sys.executable, "-m", f"ecos_lightning.commands.{side}", *map(str, argv)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def tail(path: Path) -> str:
    return f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]


@pytest.mark.slow
def test_a_superlink_and_three_supernodes_sum_the_answers_then_abort_a_round_past_the_budgets(tmp_path):
    from ecos_lightning.fleet.app import APP_DIR

    cloud, logs = tmp_path / "cloud", tmp_path / "logs"
    cloud.mkdir()
    logs.mkdir()
    pool = tmp_path / "open"
    for j, colour in enumerate([(200, 40, 40), (40, 180, 60), (40, 60, 200)]):
        draw_folder(pool / str(j), 8, colour, seed=j)
    data = [draw_folder(tmp_path / f"device-{i}" / "images", IMAGES_PER_DEVICE, (40, 180, 60), 10 + i)
            for i in range(DEVICES)]
    ledgers = [tmp_path / f"device-{i}" / "ledger.json" for i in range(DEVICES)]
    run_command("cloud", "probe", "--open", pool, "--out", cloud / "centroids.ecos", "--num-clusters", 4,
                "--input-size", 32)

    link_port, *node_ports = free_ports(1 + DEVICES)
    cli_home = tmp_path / "flwr-cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                          f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')

    def start(name: str, home: Path, *command) -> subprocess.Popen:
        environment = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "FLWR_HOME": str(home)}
        return subprocess.Popen([str(VENV_BIN / command[0]), *map(str, command[1:])], env=environment, cwd=tmp_path,
                                stdout=(logs / f"{name}.log").open("wb"), stderr=subprocess.STDOUT)

    def flwr_run(name: str, scores: Path) -> subprocess.Popen:
        return start(name, cli_home, "flwr", "run", APP_DIR, "local", "--stream", "--run-config",
                     f'centroids="{cloud / "centroids.ecos"}" scores="{scores}" noise-multiplier={NOISE} '
                     f'devices={DEVICES} threshold=2')

    def logged() -> str:
        return "\n".join(tail(path) for path in sorted(logs.iterdir()))

    scores, refused = cloud / "scores.ecos", cloud / "refused.ecos"
    deadline = time.monotonic() + DEPLOYMENT_TIMEOUT_S
    processes = [start("superlink", tmp_path / "flwr-superlink", "flower-superlink", "--insecure", "--port",
                       link_port, "--disable-runtime-dependency-installation")]
    try:
        for i in range(DEVICES):
            processes.append(start(f"supernode-{i}", tmp_path / f"flwr-supernode-{i}", "flower-supernode",
                                   "--insecure", "--superlink", f"127.0.0.1:{link_port}", "--port", node_ports[i],
                                   "--node-config", f'data="{data[i]}" ledger="{ledgers[i]}" max-epsilon={BUDGET}'))
        processes.append(flwr_run("flwr-run", scores))
        while not scores.exists() and processes[-1].poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert scores.exists(), "no scores file in time\n" + logged()
        processes[-1].wait(timeout=max(1.0, deadline - time.monotonic()))  # --stream ends with the run
        # A second round would pass every device's budget: each refuses, fewer than the threshold answer.
        processes.append(flwr_run("flwr-run-past-budget", refused))
        processes[-1].wait(timeout=max(1.0, deadline - time.monotonic()))
        assert not refused.exists() and "no scores file was written" in logged(), logged()
    finally:
        stop(processes)

    message = ScoresMessage.from_bytes(scores.read_bytes())
    centroids = CentroidsMessage.from_bytes((cloud / "centroids.ecos").read_bytes())
    assert message.centroids_digest == centroids.digest() and message.num_clusters == 4
    total = DEVICES * IMAGES_PER_DEVICE  # q = 1: each image covers one centroid
    sum_std = message.noise_multiplier * np.sqrt(message.num_clusters)  # noise of the sum of the K scores
    assert abs(float(message.scores.sum()) - total) <= 5 * sum_std
    assert np.array_equal(message.scores, np.rint(message.scores))  # an exact integer sum
    for ledger in ledgers:
        [entry] = read_ledger(ledger)["entries"]
        [release] = entry["releases"]
        assert release["mechanism"] == "skellam_sum" and release["noise_multiplier"] == NOISE
    out = run_command("cloud", "sample", "--scores", scores, "--budget", 6, "--out", cloud / "proxy.json",
                      "--state", cloud / "cloud_state")
    assert (cloud / "proxy.json").is_file(), out


def _round(centroids: bytes = b"", **overrides) -> dict:
    return {"centroids": centroids, "noise-multiplier": 4.0, "q": 1, "threshold": 2, "colluding": 0, **overrides}


@pytest.mark.parametrize("hostile, problem", [
    (dict(centroids=b"\x80\x04" + bytes(300)), "not an ECOS message"),  # a pickle's opening, never unpickled
    (dict(centroids=ScoresMessage(np.zeros(4, np.float32), 1.0, 1, 1e-5, 1.0, "0" * 64).to_bytes()),
     "expected a 'centroids' message"),
    (dict(centroids="centroids.ecos"), "'centroids' must be the bytes of a centroids message, got str"),
    (dict(clusters=9), "9 centroids is more than this device answers"),
    (dict(**{"noise-multiplier": -1.0}), "noise_multiplier"),
    (dict(threshold=1), "'threshold' must be at least 2"),
    (dict(threshold="2"), "'threshold' must be an integer"),
    (dict(threshold=3), "claims threshold 3, but SecAgg\\+ reveals sums of 2 answers"),
])
def test_a_device_refuses_a_hostile_round_with_one_line_and_records_nothing(tmp_path, monkeypatch, hostile, problem):
    from ecos_lightning.data import folders
    from ecos_lightning.fleet.app import answer_round

    def forbidden(*args, **kwargs):
        raise AssertionError("a refused round must not read images")

    monkeypatch.setattr(folders, "scan_images", forbidden)
    clusters = hostile.pop("clusters", 4)
    blob = CentroidsMessage(np.eye(clusters, 8, dtype=np.float32)).to_bytes()
    config = _round(**{"centroids": blob, **hostile})
    node = {"data": str(tmp_path / "images"), "ledger": str(tmp_path / "ledger.json"), "max-clusters": 8}
    with pytest.raises(ValueError, match=problem) as caught:
        answer_round(config, node, secagg_threshold=2)
    assert str(caught.value).startswith("refused the cloud's round") and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_device_refuses_a_round_past_its_budget_before_reading_an_image(tmp_path, monkeypatch):
    from ecos_lightning.data import folders
    from ecos_lightning.encoders import encoder_feature_dim, spec_for_model
    from ecos_lightning.fleet.app import answer_round

    def forbidden(*args, **kwargs):
        raise AssertionError("a refused round must not read images")

    monkeypatch.setattr(folders, "scan_images", forbidden)
    spec = spec_for_model("efficientnet_lite0", input_size=32)
    blob = CentroidsMessage(np.eye(4, encoder_feature_dim(spec), dtype=np.float32), encoder=spec.to_dict()).to_bytes()
    node = {"data": str(tmp_path / "images"), "ledger": str(tmp_path / "ledger.json"), "max-epsilon": 0.01}
    with pytest.raises(ValueError, match="refused, nothing was released"):
        answer_round(_round(blob), node)
    assert list(tmp_path.iterdir()) == []
