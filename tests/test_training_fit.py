"""python -m training fit/export end to end on 24 tiny photos: export loads, resume after SIGKILL and SIGTERM."""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import skimage_photos

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# The reference run: cpu-tiny for 4 epochs of 3 steps; the resume tests use the same settings.
TINY = ["--recipe", "cpu-tiny", "epochs=4"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """24 small photos (4 crops of each of 6 photos, also as 6 labeled classes) plus 2 unreadable files."""
    root = tmp_path_factory.mktemp("train")
    photos, labeled = root / "photos", root / "labeled"
    for name, pixels in skimage_photos().items():
        image = Image.fromarray(pixels)
        w, h = image.size
        (labeled / name).mkdir(parents=True)
        for k in range(4):
            crop = image.crop((k * w // 8, k * h // 8, w - k * w // 10, h - k * h // 10)).resize((72, 60))
            sub = photos / ("a" if k % 2 else "b")  # nested folders: the search is recursive
            sub.mkdir(parents=True, exist_ok=True)
            crop.save(sub / f"{name}_{k}.jpg", quality=90)
            crop.save(labeled / name / f"{k}.png")
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "b" / "notes.png").write_bytes(b"this is not an image")
    return photos, labeled


def run(args, module="training", **kwargs):
    """python -m MODULE ... (default: python -m training) in the repo, returning the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=300, **kwargs)


def export(run_dir, out, *extra):
    """`python -m training export RUN --out OUT ...`, in this process (it is pure file work; saves a start-up)."""
    from training.__main__ import main

    assert main(["export", str(run_dir), "--out", str(out), *extra]) == 0


def losses(run_dir: Path) -> dict:
    """step → loss from a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps repeated or out of order: {steps}"
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory):
    """An uninterrupted cpu-tiny run with the kNN monitor on."""
    photos, labeled = tiny_data
    out = tmp_path_factory.mktemp("runs") / "reference"
    proc = run(["fit", *TINY, "--data", str(photos), "--out", str(out), f"monitor_data={labeled}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_fit_logs_health_and_counts_bad_files(reference_run):
    out, proc = reference_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    baseline = records.pop(0)  # the kNN monitor's random-init score, before step 1
    assert baseline["step"] == 0 and 0.0 <= baseline["knn_top1"] <= 1.0
    assert [r["step"] for r in records] == list(range(1, 13))
    for r in records:
        assert np.isfinite(r["loss"]) and abs(r["loss"] - (r["on_diag"] + 0.0051 * r["off_diag"])) < 1e-3 * r["loss"]
        assert r["samples_per_s"] > 0 and 0 < r["rankme"] <= r["rankme_max"] and r["feat_std"] > 0
    assert records[0]["lr"] == 0.0 and records[2]["lr"] > 0  # warm-up starts at zero
    assert "knn_top1" in records[2] and 0.0 <= records[2]["knn_top1"] <= 1.0  # epoch end: monitor ran
    ck = torch.load(out / "checkpoint.pt", weights_only=True)  # only tensors and plain values inside
    assert ck["finished"] and ck["step"] == 12 and ck["data"]["images"] == 26
    # Each epoch drops 2 of the 26 files (incomplete last batch), so the bad ones are seen up to 8 times.
    bad = sum(r["bad_files"] for r in records)
    assert 1 <= bad <= 8 and ck["data"]["bad_files"] == bad
    assert "skipping unreadable file" in proc.stderr and "COLLAPSE" not in proc.stderr


def test_export_loads_in_embedder(reference_run, tiny_data, tmp_path):
    from btembed import Embedder

    out, _ = reference_run
    proc = run(["export", str(out), "--out", str(tmp_path / "model"), "--name", "test/tiny"])
    assert proc.returncode == 0, proc.stderr
    embedder = Embedder.from_pretrained(tmp_path / "model", device="cpu")
    photos = sorted(tiny_data[0].rglob("*.jpg"))[:5]
    vectors = embedder.embed([p for p in photos if p.stat().st_size])
    assert vectors.shape[1] == 512 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["name"] == "test/tiny" and config["preprocess"]["input_size"] == 32
    # Another inference resolution: same weights, the crop size asked for and a 256/224 resize unless given.
    assert config["preprocess"]["interpolation"] == "bilinear"  # the recipe's export_interpolation default
    cases = ((["--input-size", "48"], 48, 55, "bilinear"),
             (["--input-size", "48", "--resize-size", "64", "--interpolation", "bicubic"], 48, 64, "bicubic"))
    for extra, crop, resize, interpolation in cases:
        folder = tmp_path / f"model-{resize}"
        export(out, folder, *extra)
        pre = json.loads((folder / "config.json").read_text())["preprocess"]
        assert (pre["input_size"], pre["resize_size"], pre["interpolation"]) == (crop, resize, interpolation)
        assert (folder / "model.safetensors").read_bytes() == (tmp_path / "model" / "model.safetensors").read_bytes()
    assert config["training"]["recipe"] == "cpu-tiny" and config["training"]["epochs"] == 4
    assert config["training"]["steps"] == 12 and config["training"]["finished"]
    assert config["training"]["config"]["projector"] == [64, 64]
    assert "train_loss" in config["metrics"] and "knn_top1" in config["metrics"]
    card = (tmp_path / "model" / "README.md").read_text()
    assert "library_name: btembed" in card and "cpu-tiny" in card


@contextlib.contextmanager
def _fit_process(*args):
    """`python -m training fit ARGS` in the background; killed with its loader workers if the test fails early."""
    proc = subprocess.Popen([sys.executable, "-m", "training", "fit", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        # A failed wait or a timeout must not leave a 50-epoch run training in the background.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    path = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines()
                                  if line.strip()):
            return
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step}")


def test_resume_after_sigkill_reproduces_losses(reference_run, tiny_data, tmp_path):
    photos, _ = tiny_data
    out = tmp_path / "killed"
    with _fit_process(*TINY, "--data", str(photos), "--out", str(out)) as proc:
        _wait_for_step(out, proc, 5)
        # SIGKILL (loader workers too): no chance to checkpoint; the last periodic checkpoint (step 4) counts
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = run(["fit", *TINY, "--data", str(photos), "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = int(re.search(r"resuming at step (\d+)", resumed.stderr).group(1))
    assert 4 <= start < 12
    expected, got = losses(reference_run[0]), losses(out)
    assert sorted(got) == list(range(1, 13))
    for step in range(1, 13):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step


def test_sigterm_checkpoints_then_resumes(tiny_data, tmp_path):
    photos, _ = tiny_data
    out = tmp_path / "terminated"
    args = ["--recipe", "cpu-tiny", "epochs=50", "checkpoint_every=1000"]
    with _fit_process(*args, "--data", str(photos), "--out", str(out)) as proc:
        _wait_for_step(out, proc, 2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    stopped = ck["step"]
    assert stopped >= 2 and not ck["finished"] and max(losses(out)) == stopped
    # Resume without --recipe: the saved config is used; max_steps is a runtime key and may change.
    resumed = run(["fit", "--data", str(photos), "--out", str(out), f"max_steps={stopped + 2}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == stopped + 2
    assert sorted(losses(out)) == list(range(1, stopped + 3))
    # A different recipe setting on the same run folder is refused with one clear line.
    refused = run(["fit", *args, "lr_weights=0.5", "--data", str(photos), "--out", str(out)])
    assert refused.returncode == 1 and "lr_weights" in refused.stderr and "Traceback" not in refused.stderr
    # Other images (as many, so the same steps per epoch) are refused; the same names in a moved copy resume.
    moved = tmp_path / "moved"
    shutil.copytree(photos, moved)
    resumed = run(["fit", "--data", str(moved), "--out", str(out), f"max_steps={stopped + 2}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first = sorted(moved.rglob("*.jpg"))[0]
    first.rename(first.with_name("renamed.jpg"))
    other = run(["fit", "--data", str(moved), "--out", str(out), f"max_steps={stopped + 3}"])
    assert other.returncode == 1 and "holds other files" in other.stderr and "Traceback" not in other.stderr


def test_ctrl_c_checkpoints_the_step_in_flight(tiny_data, tmp_path):
    """Ctrl-C reaches the whole process group (loader workers too): the run saves its step and exits 130."""
    photos, _ = tiny_data
    out = tmp_path / "ctrl-c"
    with _fit_process("--recipe", "cpu-tiny", "epochs=50", "checkpoint_every=1000", "num_workers=2",
                      "--data", str(photos), "--out", str(out)) as proc:
        _wait_for_step(out, proc, 2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "stopped by SIGINT" in stderr and "Traceback" not in stderr, stderr[-3000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] >= 2 and ck["step"] == max(losses(out))


def test_a_run_that_raises_exits_with_its_loader_workers(tiny_data, tmp_path):
    """An unexpected error mid-run (here: the metrics log turned into a folder) ends the process with its traceback.

    The loader workers ignore SIGTERM, so without an explicit shutdown the interpreter's exit waited on them forever.
    """
    photos, _ = tiny_data
    out = tmp_path / "raises"
    args = ["--recipe", "cpu-tiny", "epochs=200", "num_workers=2", "checkpoint_every=1000"]
    with _fit_process(*args, "--data", str(photos), "--out", str(out)) as proc:
        _wait_for_step(out, proc, 2)
        (out / "metrics.jsonl").rename(out / "metrics.moved")
        (out / "metrics.jsonl").mkdir()
        _, stderr = proc.communicate(timeout=120)  # before the fix: TimeoutExpired, the process never exited
    assert proc.returncode == 1 and "IsADirectoryError" in stderr, stderr[-3000:]


def test_time_budget_fits_the_lr_schedule_and_resumes_it(tiny_data, tmp_path):
    """A budget too small for the warm-up: steps 2-12 are timed, 13 steps are scheduled (with a warning), and run."""
    out = tmp_path / "budget"
    args = ["fit", "--recipe", "cpu-tiny", "epochs=8", "warmup_epochs=4", "time_budget=0.0001",
            "--data", str(tiny_data[0]), "--out", str(out)]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: the time budget ends inside the lr warm-up (12 steps" in proc.stderr
    assert re.search(r"time budget 0.0001 min: [0-9.]+ s per step over steps 2-12, so the lr schedule is 13 steps "
                     r"\(4.33 of 8 epochs\)", proc.stderr), proc.stderr[-3000:]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["config"]["schedule_steps"] == 13 and ck["total_steps"] == 13 and ck["step"] == 13 and ck["finished"]
    assert max(losses(out)) == 13
    # The same command again keeps the decided schedule (no refusal over schedule_steps, no new timing).
    again = run(args)
    assert again.returncode == 0 and "already finished (13 steps)" in again.stderr, again.stderr[-3000:]
    model = tmp_path / "model"
    export(out, model)
    source = json.loads((model / "config.json").read_text())["source"]["description"]
    assert "fitted to a 0.0001-minute budget: 13 steps" in source


def test_init_from_starts_at_another_runs_weights(reference_run, tiny_data, tmp_path):
    """lr 0 keeps the loaded weights, so they must equal the reference run's; the export says where they came from."""
    ref = reference_run[0]
    out = tmp_path / "continued"
    proc = run(["fit", *TINY, "epochs=1", "lr_weights=0", "lr_biases=0", f"init_from={ref}",
                "--data", str(tiny_data[0]), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"starting from the weights of an earlier run ({ref.resolve()}, step 12" in proc.stderr
    theirs = torch.load(ref / "checkpoint.pt", weights_only=True)["model"]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    weights = [k for k in theirs if k.endswith(".weight")]
    assert weights and all(torch.equal(ck["model"][k], theirs[k]) for k in weights)
    assert ck["init"]["from"] == str(ref.resolve()) and ck["init"]["step"] == 12
    model = tmp_path / "model"
    export(out, model)
    source = json.loads((model / "config.json").read_text())["source"]["description"]
    assert f"started from the weights of an earlier run ({ref.resolve()}, step 12" in source
    # A different projector cannot take those weights: refused before any step, naming the key.
    bad = run(["fit", *TINY, "projector=[32,32]", f"init_from={ref}", "--data", str(tiny_data[0]),
               "--out", str(tmp_path / "bad")])
    assert bad.returncode != 0 and "projector=[64, 64]" in bad.stderr, bad.stderr[-2000:]
    missing = run(["fit", *TINY, f"init_from={tmp_path}", "--data", str(tiny_data[0]), "--out", str(tmp_path / "m")])
    assert missing.returncode != 0 and "not a training run (no checkpoint.pt)" in missing.stderr, missing.stderr[-2000:]


def test_init_from_a_model_folder_loads_its_trunk(reference_run, tiny_data, tmp_path):
    """An exported model has no projector: its trunk is loaded (any projector width), the projector starts fresh."""
    from safetensors.torch import load_file

    model = tmp_path / "model"
    export(reference_run[0], model)
    out = tmp_path / "from-model"
    proc = run(["fit", *TINY, "epochs=1", "lr_weights=0", "lr_biases=0", "projector=[32,32]", f"init_from={model}",
                "--data", str(tiny_data[0]), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"starting from the trunk of the model {model.resolve()} (weights sha256 " in proc.stderr
    trunk = load_file(str(model / "model.safetensors"))
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    weights = [k for k in trunk if k.endswith(".weight")]
    assert weights and all(torch.equal(ck["model"][f"trunk.trunk.{k}"], trunk[k]) for k in weights)
    assert ck["init"]["kind"] == "model" and ck["init"]["name"] == "model"
    exported = tmp_path / "exported"
    export(out, exported)
    source = json.loads((exported / "config.json").read_text())["source"]["description"]
    assert f"started from the trunk of the model {model.resolve()}" in source and "projector from random init" in source

    # Another architecture is refused (the fit command turns ConfigError into its one-line error before any step);
    # so are weights that fail their sha256.
    from training.checkpoint import init_weights
    from training.config import ConfigError, apply_overrides, load_recipe
    from training.model import build_network

    other = tmp_path / "other"
    shutil.copytree(model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architecture": "resnet34"}))
    recipe = apply_overrides(load_recipe("cpu-tiny"), [f"init_from={other}"])
    with pytest.raises(ConfigError, match=r"^init_from=\S+ is a resnet34, this run has architecture='resnet18'"):
        init_weights(build_network(recipe), recipe)
    (other / "config.json").write_text(json.dumps(config))
    with open(other / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(ConfigError, match="sha256"):
        init_weights(build_network(recipe), recipe)
    # A registry name works too: the embedded default, offline.
    from btembed import Encoder

    recipe = apply_overrides(load_recipe("cpu-tiny"), ["init_from=btembed/default-r18"])
    net = build_network(recipe)
    assert init_weights(net, recipe)["name"] == "btembed/default-r18"
    assert torch.equal(net.trunk.trunk.conv1.weight, Encoder.from_pretrained("btembed/default-r18").trunk.conv1.weight)


def test_linear_eval_paper_protocol_at_tiny_size(reference_run, tiny_data, tmp_path):
    from training.linear_eval import LinearEvalConfig, linear_eval

    model = tmp_path / "model"
    export(reference_run[0], model)
    labeled = tiny_data[1]
    proc = run(["linear-eval", str(model), "--data", str(labeled), "--epochs", "2", "--batch-size", "8",
                "--workers", "0", "--json", "--record"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["classes"] == 6 and result["val_images"] == 6 and result["train_images"] == 18
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    recorded = json.loads((model / "config.json").read_text())["metrics"]["linear_top1_labeled"]
    assert recorded["value"] == round(result["top1"], 4) and "frozen trunk" in recorded["protocol"]
    # Frozen features, classifier only: crops of 6 distinct photos are linearly separable.
    fast = linear_eval(model, labeled, config=LinearEvalConfig(epochs=30, batch_size=8, num_workers=0,
                                                               augment=False), device="cpu")
    assert fast["top1"] >= 0.5


def test_dev_eval_then_ship_default_into_a_copy(reference_run, tiny_data, tmp_path):
    """The shipping path of the embedded default, into a copy of weights/ and registry.json (never the package's)."""
    import shutil

    from btembed import Embedder
    from hub.registry_tools import REGISTRY_PATH, read_registry

    fp32 = tmp_path / "fp32"
    export(reference_run[0], fp32)
    labeled = tiny_data[1]  # 6 classes x 4 crops: one dev task called "labeled"
    evaluation, manifest, registry = tmp_path / "dev.json", tmp_path / "manifest.json", tmp_path / "registry.json"
    # Measured as a staged copy in two parallel jobs, recorded under the name it ships as.
    proc = run([str(fp32), "--dev", str(labeled.parent), "--tasks", "labeled", "--folds", "2", "--seeds", "0", "1",
                "--jobs", "2", "--name", "test/ship", "--out", str(evaluation)], module="devdata.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(evaluation.read_text())["rows"]
    assert [r["features"] for r in rows] == ["model", "random-init", "raw32"]  # table order, whatever ended first
    assert all("--model test/ship " in c and str(fp32) not in c for r in rows for c in r["commands"])
    assert all(r["images"] == 24 and 0.0 <= r["linear_top1"] <= 1.0 for r in rows)
    # Each number is the mean of one `btembed probe --seed S` per seed, and those commands are kept.
    for r in rows:
        assert r["seeds"] == [0, 1] and [c.split("--seed ")[1].split()[0] for c in r["commands"]] == ["0", "1"]
        assert r["knn_top1"] == pytest.approx(sum(r["per_seed"]["knn_top1"]) / 2)
    manifest.write_text(json.dumps({"sources": {"skimage": {"package": "scikit-image", "version": "test",
                                                            "licence": "BSD-3-Clause", "file_count": 24}}}))
    shutil.copy(REGISTRY_PATH, registry)
    before = REGISTRY_PATH.read_bytes()
    proc = run([str(reference_run[0]), "--name", "test/ship", "--folder", "ship", "--eval", str(evaluation),
                "--data-manifest", str(manifest), "--weights-root", str(tmp_path / "weights"),
                "--registry", str(registry)], module="hub.ship_default")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert REGISTRY_PATH.read_bytes() == before  # the package's own registry is untouched
    shipped = tmp_path / "weights" / "ship"
    config = json.loads((shipped / "config.json").read_text())
    assert config["name"] == "test/ship" and config["training"]["weights_storage"].startswith("fp16")
    assert config["metrics"]["dev/labeled/model/linear_top1"]["value"] == round(rows[0]["linear_top1"], 4)
    assert config["training"]["data_sources"]["skimage"]["count"] == 24
    card = (shipped / "README.md").read_text()
    assert "## Development-set evaluation" in card and "- labeled: linear" in card and "| skimage |" in card
    assert "mean of --seed 0, 1" in card and "mean of --seed 0, 1" in config["metrics"][
        "dev/labeled/model/linear_top1"]["protocol"]
    entry = read_registry(registry)
    assert entry["default"] == "test/ship" and entry["models"]["test/ship"]["embedded"] == "ship"
    # fp16 storage stays within the shipping tolerance of the fp32 export.
    photos = [p for p in sorted(tiny_data[0].rglob("*.jpg")) if p.stat().st_size][:6]
    a = Embedder.from_pretrained(fp32, backend="torch").embed(photos)
    b = Embedder.from_pretrained(shipped, backend="torch").embed(photos)
    assert np.abs(a - b).max() <= 1e-3

    # --recard: the shipped folder gets a new evaluation (here seed 0 alone) without its run; weights unchanged.
    weights = (shipped / "model.safetensors").read_bytes()
    seed0 = [{**{k: v for k, v in r.items() if k not in ("per_seed", "commands")}, "seeds": [0],
              **{k: v[0] for k, v in r["per_seed"].items()}} for r in rows]
    evaluation.write_text(json.dumps({"seeds": [0], "rows": seed0}))
    proc = run(["--recard", str(shipped), "--name", "test/ship", "--folder", "ship", "--eval", str(evaluation),
                "--weights-root", str(tmp_path / "weights"), "--registry", str(registry)],
               module="hub.ship_default")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (shipped / "model.safetensors").read_bytes() == weights
    config = json.loads((shipped / "config.json").read_text())
    assert config["metrics"]["dev/labeled/model/linear_top1"]["value"] == round(seed0[0]["linear_top1"], 4)
    assert "--seed 0;" in config["metrics"]["dev/labeled/model/linear_top1"]["protocol"]
    assert config["training"]["data_sources"]["skimage"]["count"] == 24  # kept from the first ship
    assert "description" not in config["training"]["config"]
    card = (shipped / "README.md").read_text()
    assert "mean of --seed" not in card and "--seeds 0`" in card and "| skimage |" in card
    registered = read_registry(registry)["models"]["test/ship"]  # the registry carries the new numbers too
    assert registered["metrics"]["dev/labeled/model/linear_top1"]["value"] == round(seed0[0]["linear_top1"], 4)
    # A run and --recard together, or neither, is a usage error.
    assert run(["--eval", str(evaluation)], module="hub.ship_default").returncode == 2


@pytest.mark.parametrize("old, new", [("training.dev_eval", "devdata.evaluate"), ("training.devset", "devdata.devset"),
                                      ("training.offline_photos", "devdata.pool"),
                                      ("training.ship_default", "hub.ship_default")])
def test_old_command_names_say_the_new_spelling(old, new):
    """Moved commands keep their old names as one line that says the new one; training never runs devdata or hub."""
    proc = run(["X", "--seeds", "0 1"], module=old)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"python -m {new} X --seeds '0 1'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_the_shipped_card_names_no_moved_command():
    """The embedded default's card told readers to run `python -m training.devset` / `training.dev_eval`, which
    only print their new spelling and exit 2."""
    import btembed

    card = (Path(btembed.__file__).parent / "weights" / "default-r18" / "README.md").read_text()
    moved = {p.stem for p in (Path(__file__).resolve().parents[1] / "training").glob("*.py")
             if "from training.moved import forward" in p.read_text()}
    assert {"dev_eval", "devset", "offline_photos", "ship_default"} <= moved
    named = set(re.findall(r"python -m training\.(\w+)", card))
    assert not named & moved, named & moved
    assert "python -m devdata.devset DEV" in card and "python -m devdata.evaluate btembed/default-r18" in card


def test_a_batch_left_with_one_readable_image_stops_with_one_line(tmp_path):
    """BatchNorm and the loss need two images; a batch of one used to end in a torch traceback."""
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(data / "good.png")
    for i in range(3):
        (data / f"bad{i}.jpg").write_text("not an image")
    proc = run(["fit", "--recipe", "cpu-tiny", "--data", str(data), "--out", str(tmp_path / "run"), "batch_size=4",
                "max_steps=1", "num_workers=0"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "had a single readable image" in proc.stderr


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "simclr", "byol", "simsiam", "directpred"])
def test_every_objective_fits_exports_and_loads(name, tiny_data, tmp_path):
    """`fit --recipe cpu-tiny objective=NAME` logs the objective's parts with the health metrics and kNN, exports a
    model that Embedder loads and linear-eval scores, and whose card names the objective and its settings."""
    from btembed import Embedder
    from training.linear_eval import LinearEvalConfig, linear_eval
    from training.objectives import get

    photos, labeled = tiny_data
    out = tmp_path / "run"
    proc = run(["fit", "--recipe", "cpu-tiny", f"objective={name}", "max_steps=3", f"monitor_data={labeled}",
                "--data", str(photos), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    objective = get(name)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3] and "knn_top1" in records[0] and "knn_top1" in trained[-1]
    for r in trained:
        assert r["parts"] and all(np.isfinite(r[k]) for k in ("loss", *r["parts"]))
        assert 0 < r["rankme"] <= r["rankme_max"] and isinstance(r["alarm"], list)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["config"]["objective"] == {"name": name, **objective.settings_dict()}
    model = tmp_path / "model"
    export(out, model)
    config = json.loads((model / "config.json").read_text())
    assert config["training"]["method"] == objective.title
    assert config["training"]["objective"]["settings"] == objective.settings_dict()
    card = (model / "README.md").read_text()
    assert objective.describe() in card
    vectors = Embedder.from_pretrained(model, device="cpu").embed(sorted(labeled.rglob("*.png"))[:3])
    assert vectors.shape == (3, 512) and np.isfinite(vectors).all()
    result = linear_eval(model, labeled, config=LinearEvalConfig(epochs=1, batch_size=8, num_workers=0,
                                                                 augment=False), device="cpu")
    assert 0.0 <= result["top1"] <= 1.0
