"""train.py through the CLI: every task config, resume after a crash, DDP on 2 CPU processes, bad input."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--data.encoder_input_size", "32", "--data.num_clusters", "20", "--data.budget", "200",
         "--model.init_args.input_size", "32", "--data.batch_size", "32"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ecos_cache"))


def run_train(args, cwd, cache_dir, check=True, extra_env=None):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", ECOS_CACHE_DIR=cache_dir,
               OMP_NUM_THREADS="1", **(extra_env or {}))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def error_lines(proc) -> list[str]:
    """The ``error:`` lines a train.py run printed on stderr."""
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def config(name):
    return ["--config", str(ROOT / "configs" / f"{name}.yaml")]


@pytest.mark.parametrize("task", ["finetune_digits", "autolabel_digits", "autolabel_knn_digits"])
def test_fast_dev_run_of_task_configs(task, tmp_path, cache_dir):
    proc = run_train(["fit", *config(task), *SMALL, "--trainer.fast_dev_run", "true",
                      "--data.cache_dir", cache_dir], tmp_path, cache_dir)
    assert "client test accuracy" in proc.stdout
    assert list(Path(cache_dir).glob("proxy-*.json"))


def test_teacher_then_distill(tmp_path, cache_dir):
    run_train(["fit", *config("teacher_digits"), "--data.encoder_input_size", "32",
               "--model.init_args.input_size", "32", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
               "--data.cache_dir", cache_dir], tmp_path, cache_dir)
    teacher = tmp_path / "runs/teacher_digits/checkpoints/last.ckpt"
    assert teacher.exists()
    proc = run_train(["fit", *config("distill_digits"), *SMALL, "--trainer.fast_dev_run", "true",
                      "--model.init_args.teacher_checkpoint", str(teacher), "--data.cache_dir", cache_dir],
                     tmp_path, cache_dir)
    assert "client test accuracy" in proc.stdout


def test_resume_after_a_crash_takes_the_proxy_from_the_checkpoint(tmp_path, cache_dir):
    args = ["fit", *config("finetune_digits"), *SMALL, "--trainer.max_epochs", "3", "--trainer.limit_train_batches",
            "2", "--trainer.limit_val_batches", "1", "--data.cache_dir", cache_dir, "--test_after_fit", "false"]
    crash = ["--trainer.callbacks+=train_helpers.CrashAtEpoch", "--trainer.callbacks.init_args.epoch", "1"]
    proc = run_train(args + crash, tmp_path, cache_dir, check=False)
    assert proc.returncode != 0  # killed
    last = tmp_path / "runs/finetune_digits/checkpoints/last.ckpt"
    assert last.exists()
    for artifact in Path(cache_dir).glob("proxy-*.json"):
        artifact.unlink()  # the resumed run must not need it, nor run the protocol again to rebuild it
    artifacts = {p: p.stat().st_mtime_ns for p in Path(cache_dir).glob("*")}

    record = ["--trainer.callbacks+=train_helpers.RecordRun", f"--trainer.callbacks.init_args.out={tmp_path}/rec"]
    run_train(args + record + ["--ckpt_path", "last"], tmp_path, cache_dir,
              extra_env={"ECOS_LOG_LEVEL": "INFO"})
    rec = json.loads((tmp_path / "rec/rank0.json").read_text())
    assert rec["epochs"] == [1, 2]
    assert {p: p.stat().st_mtime_ns for p in Path(cache_dir).glob("*")} == artifacts  # nothing re-run or rewritten

    import torch

    state = torch.load(last, map_location="cpu", weights_only=True)
    saved = json.loads(state["ProxyDataModule"]["proxy_json"])
    assert saved["indices"] == rec["proxy_indices"]

    other = run_train(args + ["--data.budget", "150", "--ckpt_path", "last"], tmp_path, cache_dir, check=False)
    errors = error_lines(other)
    assert other.returncode == 2 and len(errors) == 1, other.stderr[-2000:]
    assert f"trained on proxy {saved['hash']}, but these settings give proxy" in errors[0]
    assert {p: p.stat().st_mtime_ns for p in Path(cache_dir).glob("*")} == artifacts


def test_a_sampler_and_label_source_from_the_command_line_are_counted_in_epsilon(tmp_path, cache_dir):
    from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon

    proc = run_train(["fit", *config("finetune_digits"), *SMALL, "--trainer.fast_dev_run", "true",
                      "--data.cache_dir", cache_dir, "--data.sampler", "train_helpers.TOY_SAMPLER",
                      "--data.label_source", "train_helpers.TOY_LABELS"], tmp_path, cache_dir)
    declared = [gaussian_release(8.0, count=2, what="toy_scores"),  # what train_helpers' toys declare
                gaussian_release(4.0, count=200, sampling_rate=0.01, what="toy_labels")]
    epsilon = releases_epsilon(declared, 1e-5)
    rdp = releases_epsilon(declared, 1e-5, "rdp")
    assert f"privacy              : epsilon {epsilon:.3f} at delta 1e-05 (PLD; RDP {rdp:.3f})" in proc.stdout
    ledger, = tmp_path.rglob("privacy_ledger.json")
    entry, = json.loads(ledger.read_text())["entries"]
    assert entry["releases"] == declared and entry["what"] == ["toy_scores", "toy_labels"]


def test_a_coverage_sampler_and_a_label_source_from_a_test_file_train_through_train_py(tmp_path, cache_dir):
    import train_helpers

    proc = run_train(["fit", *config("finetune_digits"), "--data.encoder.input_size", "32", "--data.budget", "200",
                      "--data.loaders.batch_size", "32", "--model.init_args.input_size", "32",
                      "--trainer.fast_dev_run", "true", "--data.cache_dir", cache_dir,
                      "--data.sampler", "train_helpers.TopClusters", "--data.label_source", "train_helpers.ToyVotes",
                      "--data.max_epsilon", "100"], tmp_path, cache_dir)
    assert "proxy                : 200 images from sampler 'top_clusters'" in proc.stdout
    assert "DeprecationWarning" not in proc.stderr
    ledger, = tmp_path.rglob("privacy_ledger.json")
    entry, = json.loads(ledger.read_text())["entries"]
    assert entry["releases"] == [*train_helpers.TopClusters().releases(), *train_helpers.ToyVotes().releases(200)]


def test_the_fleet_config_trains_on_a_proxy_of_thirty_three_devices_of_two_domains_under_secure_aggregation(tmp_path, cache_dir):
    from ecos_lightning.protocol.privacy import releases_epsilon, skellam_sum_release

    proc = run_train(["fit", *config("fleet_digits"), *SMALL, "--trainer.fast_dev_run", "true",
                      "--data.cache_dir", cache_dir], tmp_path, cache_dir)
    declared = skellam_sum_release(6.85, 1, 26, "fleet coverage")
    epsilon = releases_epsilon([declared], 1e-5)
    assert f"privacy              : epsilon {epsilon:.3f} at delta 1e-05" in proc.stdout and 0.49 < epsilon <= 0.5
    assert "proxy                : 200 images from sampler 'fleet_ecos'" in proc.stdout
    assert "fleet, round 1: 33 of 33 devices answered" in proc.stderr
    ledger, = tmp_path.rglob("privacy_ledger.json")
    entry, = json.loads(ledger.read_text())["entries"]
    assert entry["releases"] == [declared]


def test_the_fleet_config_trains_and_tests_under_two_ddp_processes(tmp_path, cache_dir):
    """Rank 0 runs the fleet's secure round on Flower while rank 1 waits for the proxy; test after fit."""
    cache = shutil.copytree(cache_dir, tmp_path / "cache", ignore=shutil.ignore_patterns("proxy-*.json"))
    proc = run_train(["fit", *config("fleet_digits"), *SMALL, "--trainer", str(ROOT / "configs/trainer/ddp_sim.yaml"),
                      "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                      "--trainer.limit_val_batches", "1", "--data.cache_dir", str(cache)], tmp_path, str(cache))
    assert "fleet, round 1: 33 of 33 devices answered" in proc.stderr
    assert len(_summaries(proc)) == 1
    ledger, = tmp_path.rglob("privacy_ledger.json")
    assert len(json.loads(ledger.read_text())["entries"]) == 1


def _summaries(proc):
    """The client test accuracies of the run summaries printed by a train.py run."""
    return [float(line.split(":")[1]) for line in proc.stdout.splitlines() if line.startswith("client test accuracy")]


def _check_tested_once(rec):
    """Every client test image was tested by exactly one rank, and test_acc is their accuracy."""
    ranks = [json.loads(path.read_text()) for path in sorted(Path(rec).glob("test*.json"))]
    assert len(ranks) == 2 and ranks[0]["size"] == ranks[1]["size"]
    assert sum(r["seen"] for r in ranks) == ranks[0]["size"]
    accuracy = sum(r["correct"] for r in ranks) / ranks[0]["size"]
    assert all(r["test_acc"] == pytest.approx(accuracy, abs=1e-6) for r in ranks)
    return accuracy


def test_ddp_two_cpu_processes_extract_share_the_proxy_shard_batches_and_test_once(tmp_path):
    cache = str(tmp_path / "cache")  # cold: both ranks extract the features
    record = [f"--trainer.callbacks.init_args.out={tmp_path}/rec"]
    proc = run_train(["fit", *config("finetune_digits"), *SMALL,
                      "--trainer", str(ROOT / "configs/trainer/ddp_sim.yaml"), "--trainer.max_epochs", "1",
                      "--trainer.limit_val_batches", "2", "--data.cache_dir", cache, "--data.feature_chunk_rows", "2048",
                      "--trainer.callbacks+=train_helpers.RecordRun", *record,
                      "--trainer.callbacks+=train_helpers.RecordTest", *record], tmp_path, cache)
    chunks = set(re.findall(r"open-pool features \[chunk (\d+)/(\d+), rank (\d)/2\]", proc.stderr))
    total = int(next(iter(chunks))[1])
    assert {(int(c) - 1) % 2 for c, _, _ in chunks} == {0, 1} and all((int(c) - 1) % 2 == int(r) for c, _, r in chunks)
    assert {int(c) for c, _, _ in chunks} == set(range(1, total + 1))
    # pool and client, complete: each matrix beside its record, nothing unfinished left over
    assert sorted(p.suffix for p in Path(cache).glob("features-*")) == [".json", ".json", ".npy", ".npy"]
    r0, r1 = (json.loads((tmp_path / f"rec/rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["proxy_indices"] == r1["proxy_indices"]
    assert r0["shard"] and r1["shard"] and not set(r0["shard"]) & set(r1["shard"])
    assert r0["val_acc"] == r1["val_acc"]
    accuracy = _check_tested_once(tmp_path / "rec")
    assert _summaries(proc) == [round(accuracy, 4)]


@pytest.mark.parametrize("args, message", [
    (["--model.init_args.model_name", "no_such_net"], "no_such_net"),
    (["--data.budget", "0"], "budget"),
    (["--data.budget", "abc"], "data.budget"),
    (["--data.max_epsilon", "0.1"], "max_epsilon"),
])
def test_bad_input_is_a_one_line_error(args, message, tmp_path, cache_dir):
    before = set(Path(cache_dir).glob("proxy-*.json"))
    proc = run_train(["fit", *config("finetune_digits"), *SMALL, "--trainer.fast_dev_run", "true",
                      "--data.cache_dir", cache_dir, *args], tmp_path, cache_dir, check=False)
    assert proc.returncode != 0
    errors = error_lines(proc)
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "usage:" not in proc.stderr
    assert set(Path(cache_dir).glob("proxy-*.json")) == before
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("config.yaml"))


def test_a_run_refused_when_it_starts_writes_no_config(tmp_path, cache_dir):
    proc = run_train(["fit", *config("finetune_digits"), *SMALL, "--trainer.max_steps", "1",
                      "--data.cache_dir", cache_dir, "--model.init_args.num_classes", "5"], tmp_path, cache_dir,
                     check=False)
    errors = error_lines(proc)
    assert proc.returncode == 2 and len(errors) == 1 and "num_classes" in errors[0], proc.stderr[-2000:]
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("*.ckpt"))


def test_a_check_failing_during_training_is_a_one_line_error(tmp_path, cache_dir):
    proc = run_train(["fit", *config("finetune_digits"), *SMALL, "--trainer.fast_dev_run", "true",
                      "--data.cache_dir", cache_dir, "--model.init_args.fixmatch", "true"], tmp_path, cache_dir,
                     check=False)
    errors = error_lines(proc)
    assert proc.returncode == 2 and len(errors) == 1 and "fixmatch" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_missing_teacher_checkpoint_is_a_one_line_error(tmp_path, cache_dir):
    proc = run_train(["fit", *config("distill_digits"), *SMALL, "--trainer.fast_dev_run", "true",
                      "--model.init_args.teacher_checkpoint", "nowhere/teacher.ckpt", "--data.cache_dir", cache_dir],
                     tmp_path, cache_dir, check=False)
    assert proc.returncode != 0
    assert any(line.startswith("error:") and "nowhere/teacher.ckpt" in line for line in proc.stderr.splitlines())
    assert not list(tmp_path.rglob("*.ckpt"))


def _image_folder(root, sizes, colour):
    from PIL import Image

    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", (size, size), tuple(min(255, c + 20 * i) for c in colour)).save(root / cls / f"{i}.png")
    return root


def _folder_args(open_root, client_root, test_root):
    return ["--data.open_dataset", "torchvision.datasets.ImageFolder", "--data.open_dataset.root", str(open_root),
            "--data.client_dataset", "torchvision.datasets.ImageFolder", "--data.client_dataset.root",
            str(client_root), "--data.client_test_dataset", "torchvision.datasets.ImageFolder",
            "--data.client_test_dataset.root", str(test_root), "--model.init_args.num_classes", "2",
            "--data.budget", "6", "--data.num_clusters", "3", "--data.batch_size", "4"]


def test_image_folders_of_other_sizes_are_resized(tmp_path, cache_dir):
    open_root = _image_folder(tmp_path / "open", [20, 28, 36, 44, 52, 60], (200, 10, 10))
    client = _image_folder(tmp_path / "client", [50, 70, 90], (10, 200, 10))
    proc = run_train(["fit", *config("finetune_digits"), "--data.encoder_input_size", "32",
                      "--model.init_args.input_size", "32", "--trainer.fast_dev_run", "true",
                      "--data.cache_dir", cache_dir, *_folder_args(open_root, client, client)], tmp_path, cache_dir)
    assert "client test accuracy" in proc.stdout


def test_ddp_tests_every_client_image_once_when_they_do_not_split_evenly(tmp_path, cache_dir):
    open_root = _image_folder(tmp_path / "open", [20, 28, 36, 44, 52, 60], (200, 10, 10))
    client = _image_folder(tmp_path / "client", [50, 70, 90], (10, 200, 10))
    test = _image_folder(tmp_path / "test", [30, 40, 50], (10, 180, 30))
    (test / "a" / "0.png").rename(test / "a" / "3.png")
    _image_folder(test, [34], (10, 180, 30))  # 7 images: 2 processes cannot take the same number
    proc = run_train(["fit", *config("finetune_digits"), "--data.encoder_input_size", "32",
                      "--model.init_args.input_size", "32", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                      "--trainer.strategy", "ddp", "--trainer.max_epochs", "1", "--data.cache_dir", cache_dir,
                      *_folder_args(open_root, client, test), "--data.budget", "8",
                      "--trainer.callbacks+=train_helpers.RecordTest",
                      f"--trainer.callbacks.init_args.out={tmp_path}/rec"], tmp_path, cache_dir)
    accuracy = _check_tested_once(tmp_path / "rec")
    assert _summaries(proc) == [round(accuracy, 4)]


def test_empty_client_folder_is_a_one_line_error(tmp_path, cache_dir):
    open_root = _image_folder(tmp_path / "open", [20, 28, 36], (200, 10, 10))
    (tmp_path / "empty").mkdir()
    proc = run_train(["fit", *config("finetune_digits"), "--trainer.fast_dev_run", "true", "--data.cache_dir",
                      cache_dir, *_folder_args(open_root, tmp_path / "empty", open_root)], tmp_path, cache_dir,
                     check=False)
    assert proc.returncode != 0
    errors = error_lines(proc)
    assert len(errors) == 1 and "empty" in errors[0], proc.stderr[-2000:]


def load_train():
    """train.py as a module (it is a script at the repository root, not an installed package)."""
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_command_without_config_is_the_default_job_with_its_overrides():
    train = load_train()
    default = str(train.DEFAULT_CONFIG)
    assert train.with_default_config([]) == ["fit", "--config", default]
    assert train.with_default_config(["fit", "--trainer.max_epochs", "1"]) == [
        "fit", "--config", default, "--trainer.max_epochs", "1"]
    for named in (["fit", "--config", "x.yaml"], ["fit", "-c", "x.yaml"], ["fit", "--config=x.yaml"], ["--help"]):
        assert train.with_default_config(named) == named


def test_print_config_without_config_shows_the_default_job_with_the_override(tmp_path, cache_dir):
    proc = run_train(["fit", "--trainer.max_epochs", "1", "--print_config"], tmp_path, cache_dir)
    config = yaml.safe_load(proc.stdout)
    default = yaml.safe_load((ROOT / "configs" / "finetune_digits.yaml").read_text())
    assert config["model"]["class_path"] == default["model"]["class_path"]
    assert config["trainer"]["max_epochs"] == 1 and config["data"]["budget"] == default["data"]["budget"]


def test_a_module_of_the_unified_lightning_package_trains_through_train_py(tmp_path, cache_dir):
    proc = run_train(["fit", "--model", "train_helpers.UnifiedClassifier", "--data.encoder_input_size", "32",
                      "--data.num_clusters", "20", "--data.budget", "200", "--data.batch_size", "32",
                      "--trainer.fast_dev_run", "true", "--data.cache_dir", cache_dir], tmp_path, cache_dir)
    assert "client test accuracy" in proc.stdout and "epsilon 0.434" in proc.stdout
    assert "args parameter is intended" not in proc.stderr


def test_the_model_class_chooses_the_lightning_package(tmp_path):
    import lightning
    import pytorch_lightning

    train = load_train()
    unified_config = tmp_path / "unified.yaml"
    unified_config.write_text("model:\n  class_path: train_helpers.UnifiedClassifier\n")
    default = ["fit", "--config", str(train.DEFAULT_CONFIG)]
    assert train.model_framework(default) is pytorch_lightning
    for args in (default + ["--model", "train_helpers.UnifiedClassifier"],
                 default + ["--model.class_path=train_helpers.UnifiedClassifier"],
                 ["fit", "--config", str(unified_config)]):
        assert train.model_framework(args) is lightning.pytorch, args
    assert train.model_framework(["fit", "--config", str(unified_config), "--model", "train_helpers.CountingModel"]) \
        is pytorch_lightning
    assert train.model_framework(default + ["--model", "no_such.Module"]) is pytorch_lightning


def test_the_run_summary_shows_the_auto_label_accuracy_and_the_labelled_share():
    from types import SimpleNamespace

    class FiveImageProxy:
        epsilon, epsilon_rdp, delta, bytes_down, bytes_up = 0.999, 1.092, 1e-5, 10, 2

        def __len__(self):
            return 5

    summary = {"sampler": "ecos", "label_accuracy": 0.6, "labelled": 0.8}
    datamodule = SimpleNamespace(proxy=FiveImageProxy(), summary=lambda: summary)
    format_summary = load_train().format_summary
    assert "auto-label accuracy  : 0.6000 (80% of images labelled)" in format_summary(datamodule, {}, None, None)
    summary["labelled"] = 1.0
    assert "auto-label accuracy  : 0.6000\n" in format_summary(datamodule, {}, None, None)
