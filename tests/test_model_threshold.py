"""Whoever makes a model folder calibrates its dedup threshold: `training export` on the run's training images, `python
-m hub calibrate-dedup` for converted or published models (and their registry entry), conversions take the
registry's value. Tiny random-init resnet18s at small input sizes and generated photos keep it fast."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from btembed import sources
from btembed.config import ModelConfig
from btembed.modelfiles import cache_dir, sha256_file
from btembed.modelfolder import ModelFolder
from btembed.search.calibrate import GRID
from conftest import make_model_dir

REAL_REGISTRY = json.loads((Path(sources.__file__).parent / "registry.json").read_text())


def generated_photo(seed: int) -> Image.Image:
    """A distinct made-up scene: a two-colour gradient with a few random shapes on it."""
    rng = np.random.default_rng(seed)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, 90)[:, None, None]
    image = Image.fromarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (90, 120, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.integers(0, 100), rng.integers(0, 70)
        box = (int(x), int(y), int(x + rng.integers(10, 60)), int(y + rng.integers(10, 50)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Twelve generated photos, two folders deep (the sample is recursive)."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(12):
        (folder / f"set{i % 2}").mkdir(exist_ok=True)
        generated_photo(i).save(folder / f"set{i % 2}" / f"{i}.jpg", quality=92)
    return folder


def fake_run(run, data):
    """A finished run folder of a cpu-tiny resnet18 (32 px crops) trained on `data`."""
    from btembed import Encoder
    from training.checkpoint import save_checkpoint
    from training.config import load_recipe

    config = load_recipe("cpu-tiny")
    torch.manual_seed(0)
    trunk = Encoder(ModelConfig(architecture=config.architecture)).state_dict()
    run.mkdir()
    save_checkpoint({"config": config.to_dict(), "model": {f"trunk.{k}": v for k, v in trunk.items()},
                     "step": 6, "steps_per_epoch": 6, "finished": True, "world_size": 1, "device": "cpu",
                     "elapsed_s": 10.0, "metrics": {}, "init": None,
                     "data": {"path": str(data), "images": 12, "repeats": 1, "bad_files": 0}}, run)
    return run


def said(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "duplicate threshold" in line]


def test_training_export_records_the_threshold(photos, tmp_path, capsys):
    from training.__main__ import main

    run = fake_run(tmp_path / "run", photos)
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    config = ModelConfig.load(tmp_path / "model")
    assert config.duplicate_threshold in GRID
    precision = config.metrics["dedup_pair_precision"]
    assert precision["dataset"] == "12 photos (seeded sample, seed 0) of the run's 12 training images"
    assert f"at threshold {config.duplicate_threshold}" in precision["protocol"] and "mirror" in precision["protocol"]
    assert 0 < precision["value"] <= 1 and 0 < config.metrics["dedup_pair_recall"]["value"] <= 1
    row = next(line for line in (tmp_path / "model" / "README.md").read_text().splitlines()
               if line.startswith("| Duplicate threshold |"))
    assert str(config.duplicate_threshold) in row and "12 photos" in row and "JPEG q40" in row
    assert f"pair precision {precision['value']}" in row
    (line,) = said(capsys)
    assert line.startswith(f"duplicate threshold {config.duplicate_threshold} (pair precision")


def test_training_export_skips_in_one_line(photos, tmp_path, capsys):
    from training.__main__ import main

    run = fake_run(tmp_path / "run", tmp_path / "moved-away")
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    (line,) = said(capsys)
    assert line.startswith("duplicate threshold not calibrated: ") and "is not a folder" in line
    assert "--dedup-photos" in line and "0.95" in line
    assert ModelConfig.load(tmp_path / "model").duplicate_threshold is None
    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        generated_photo(i).save(few / f"{i}.png")
    assert main(["export", str(run), "--out", str(tmp_path / "model"), "--dedup-photos", str(few)]) == 0
    (line,) = said(capsys)
    assert "has 3 readable images" in line and "needs at least 10" in line
    assert main(["export", str(run), "--out", str(tmp_path / "model"), "--no-dedup-calibration"]) == 0
    assert said(capsys) == [] and "dedup_pair_recall" not in ModelConfig.load(tmp_path / "model").metrics


def test_hub_command_writes_the_folder_and_the_registry(photos, tmp_path, capsys):
    from hub.__main__ import main as hub_main

    folder = make_model_dir(tmp_path / "mine", input_size=32, resize_size=36)  # config name test/resnet18
    registry = tmp_path / "registry.json"
    entry = {"repo_id": "test/resnet18", "released": False, "revision": None, "architecture": "resnet18",
             "embedding_dim": 512, "license": "", "files": {}, "metrics": {}, "embedded": None, "description": "t"}
    registry.write_text(json.dumps({**REAL_REGISTRY, "models": {**REAL_REGISTRY["models"], "test/resnet18": entry}}))
    assert hub_main(["calibrate-dedup", str(folder), "--photos", str(photos), "--record",
                     "--registry", str(registry)]) == 0
    result = json.loads(capsys.readouterr().out)
    config = ModelConfig.load(folder)
    assert config.duplicate_threshold == result["threshold"] and result["photos"] == 12
    assert config.metrics["dedup_pair_precision"]["value"] == result["precision"]
    assert config.metrics["dedup_pair_precision"]["dataset"].endswith(f"of the folder {photos.name}")
    assert "| Duplicate threshold |" in (folder / "README.md").read_text()
    recorded = json.loads(registry.read_text())["models"]["test/resnet18"]
    assert recorded["duplicate_threshold"] == config.duplicate_threshold
    assert recorded["metrics"]["dedup_pair_recall"] == config.metrics["dedup_pair_recall"]
    assert json.loads(registry.read_text())["models"]["btembed/r50"] == REAL_REGISTRY["models"]["btembed/r50"]


def test_hub_command_refuses_a_shared_folder_in_one_line(photos, tmp_path, capsys):
    from hub.__main__ import main as hub_main

    shared = make_model_dir(cache_dir() / "models" / "test--shared" / "0123456789abcdef", input_size=32,
                            resize_size=36)
    before = (shared / "config.json").read_bytes()
    assert hub_main(["calibrate-dedup", str(shared), "--photos", str(photos)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("python -m hub calibrate-dedup: error: ")
    assert "btembed's model cache" in err and "--record" in err
    # --record with no such entry is refused before any work; with one, only the registry is written.
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(REAL_REGISTRY))
    assert hub_main(["calibrate-dedup", str(shared), "--photos", str(photos), "--record",
                     "--registry", str(registry)]) == 1
    assert "is no entry of the registry" in capsys.readouterr().err
    assert hub_main(["calibrate-dedup", str(shared), "--photos", str(photos), "--record", "--name", "btembed/r50",
                     "--registry", str(registry)]) == 0
    assert "left as it is" in capsys.readouterr().err
    assert (shared / "config.json").read_bytes() == before
    assert json.loads(registry.read_text())["models"]["btembed/r50"]["duplicate_threshold"] in GRID


def test_registry_rules_for_the_threshold(tmp_path):
    from hub.registry_tools import check_entry, entry_from_folder

    folder = make_model_dir(tmp_path / "m", input_size=32, resize_size=36)
    assert "duplicate_threshold" not in entry_from_folder(folder, "org/m", None)
    config = ModelConfig.load(folder)
    config.duplicate_threshold = 0.955
    config.save(folder)
    entry = entry_from_folder(folder, "org/m", None)
    assert entry["duplicate_threshold"] == 0.955 and check_entry("org/m", entry) == []
    assert check_entry("org/m", {**entry, "duplicate_threshold": 1.5}) == \
        ["org/m: duplicate_threshold 1.5 is not a cosine in (0, 1]"]
    assert "duplicate_threshold_embedding_only" not in entry
    config.duplicate_threshold_embedding_only = 0.99  # `btembed dedup --no-pixel-check` reads this one
    config.save(folder)
    entry = entry_from_folder(folder, "org/m", None)
    assert entry["duplicate_threshold_embedding_only"] == 0.99 and check_entry("org/m", entry) == []
    assert check_entry("org/m", {**entry, "duplicate_threshold_embedding_only": 0}) == \
        ["org/m: duplicate_threshold_embedding_only 0 is not a cosine in (0, 1]"]


def test_the_registry_records_both_thresholds_of_a_calibration(tmp_path):
    from hub.registry_tools import record_duplicate_threshold

    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(REAL_REGISTRY))
    record_duplicate_threshold("btembed/r50", 0.88, {}, embedding_only=0.97, path=registry)
    entry = json.loads(registry.read_text())["models"]["btembed/r50"]
    assert (entry["duplicate_threshold"], entry["duplicate_threshold_embedding_only"]) == (0.88, 0.97)


def test_a_converted_model_takes_the_registry_value(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(0)
    trunk = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    file = tmp_path / "r18.pth"
    torch.save(trunk, file)
    metrics = {"dedup_pair_precision": {"value": 0.99, "dataset": "d", "protocol": "p"},
               "dedup_pair_recall": {"value": 0.96, "dataset": "d", "protocol": "p"}}
    entry = {"repo_id": "test/r18", "released": False, "revision": None, "architecture": "resnet18",
             "embedding_dim": 512, "license": "mit", "files": {}, "metrics": metrics, "embedded": None,
             "description": "a converted resnet18", "duplicate_threshold": 0.93,
             "source": {"url": "https://example.invalid/r18.pth", "sha256": sha256_file(file),
                        "size": file.stat().st_size, "format": "torchvision-state-dict", "license": "mit"}}

    def use_registry(path, models):
        path.write_text(json.dumps({"default": None, "models": models}))
        monkeypatch.setenv("BTEMBED_REGISTRY", str(path))

    monkeypatch.setenv("BTEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    use_registry(tmp_path / "with.json", {"test/r18": entry})
    folder = sources.fetch("test/r18", from_file=file)
    config = ModelConfig.load(folder)
    assert config.duplicate_threshold == 0.93 and config.metrics == metrics
    assert "| Duplicate threshold | 0.93 (`btembed dedup`'s default), the best F0.5 on d" in \
        (folder / "README.md").read_text()

    # Converted before the entry had one: the registry's value applies to the cached folder once it has one.
    bare = {k: v for k, v in entry.items() if k != "duplicate_threshold"}
    monkeypatch.setenv("BTEMBED_CACHE", str(tmp_path / "cache2"))
    use_registry(tmp_path / "without.json", {"test/r18": bare})
    sources.fetch("test/r18", from_file=file)
    assert ModelFolder.resolve("test/r18").config.duplicate_threshold is None
    use_registry(tmp_path / "later.json", {"test/r18": {**bare, "duplicate_threshold": 0.97,
                                                         "duplicate_threshold_embedding_only": 0.985}})
    model = ModelFolder.resolve("test/r18")
    assert model.origin == "cache" and model.config.duplicate_threshold == 0.97
    assert model.config.duplicate_threshold_embedding_only == 0.985
    assert ModelConfig.load(model.path).duplicate_threshold is None  # btembed's cache is not rewritten
    assert os.fspath(model.path).startswith(str(tmp_path / "cache2"))


def poor_calibration(monkeypatch, where):
    """Make calibrate_model (as `where` sees it) return what a 6-step run gave: 0.97 at precision 0.442."""
    from btembed.search.calibrate import Calibration

    poor = Calibration(threshold=0.97, precision=0.442, recall=0.263, photos=12, curve=[])
    monkeypatch.setattr(where, "calibrate_model", lambda *a, **k: (poor, "12 photos of test", 0.1))


def test_quality_floor():
    from btembed.search.calibrate import Calibration
    from btembed.search.model_threshold import too_poor

    assert too_poor(Calibration(0.965, 0.99, 0.95, 30, [])) is None
    assert "0.442" in too_poor(Calibration(0.97, 0.442, 0.263, 12, []))
    assert too_poor(Calibration(0.97, 0.95, 0.4, 12, []))  # precise, but misses most copies
    assert too_poor(Calibration(0.9, 0.85, 0.99, 12, []))  # finds them all, but groups distinct photos too


def test_training_export_does_not_record_a_poor_threshold(photos, tmp_path, capsys, monkeypatch):
    from btembed.search import model_threshold
    from training.__main__ import main

    poor_calibration(monkeypatch, model_threshold)
    run = fake_run(tmp_path / "run", photos)
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    (line,) = said(capsys)
    assert line.startswith("duplicate threshold not recorded: 0.97") and "0.442" in line and "0.95" in line
    config = ModelConfig.load(tmp_path / "model")
    assert config.duplicate_threshold is None and "dedup_pair_precision" not in config.metrics


def test_hub_command_refuses_a_poor_threshold_unless_forced(tmp_path, capsys, monkeypatch):
    import hub.calibrate_dedup
    from hub.__main__ import main as hub_main

    poor_calibration(monkeypatch, hub.calibrate_dedup)
    folder = make_model_dir(tmp_path / "mine", input_size=32, resize_size=36)
    before = (folder / "config.json").read_bytes()
    assert hub_main(["calibrate-dedup", str(folder), "--photos", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m hub calibrate-dedup: error: duplicate threshold not recorded")
    assert "0.442" in err and "0.95" in err and "--force" in err
    assert (folder / "config.json").read_bytes() == before
    assert hub_main(["calibrate-dedup", str(folder), "--photos", str(tmp_path), "--force"]) == 0
    assert ModelConfig.load(folder).duplicate_threshold == 0.97
