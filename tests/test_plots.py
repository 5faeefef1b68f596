"""Plots: a run's curves (python -m training plot, and in exported model cards) and the probe's confusion matrix."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from btembed.modelfiles import CURVES_FILE, sha256_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VICREG_PARTS = ("invariance", "variance", "covariance")


def write_health_log(run, parts=("on_diag", "off_diag"), steps=6, knn=True):
    """A metrics.jsonl written by the real HealthLog: a kNN note at step 0, one record per step, kNN at the end."""
    from training.config import load_recipe
    from training.metrics import HealthLog

    config = load_recipe("cpu-tiny")
    log = HealthLog(run, config, total_steps=steps, write=lambda line: None)
    run.mkdir(parents=True, exist_ok=True)
    if knn:
        log.note({"step": 0, "epoch": 0, "knn_top1": 0.25})
    generator = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        features = torch.randn(16, 32, generator=generator)
        log.update(100.0 / step, {name: float(i + step) for i, name in enumerate(parts)}, features, features,
                   samples=16, bad=0)
        log.emit(step, 0, lr=0.01 * step, extra={"knn_top1": 0.5} if knn and step == steps else None)
    return config


def fake_run(run):
    """A run folder the export accepts: a health log and a checkpoint holding random resnet18 trunk weights."""
    from btembed import Encoder
    from btembed.config import ModelConfig
    from training.checkpoint import save_checkpoint

    config = write_health_log(run)
    torch.manual_seed(0)
    trunk = Encoder(ModelConfig(architecture="resnet18")).state_dict()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    save_checkpoint({"config": config.to_dict(), "model": {f"trunk.{k}": v for k, v in trunk.items()},
                     "step": 6, "steps_per_epoch": 6, "finished": True, "world_size": 1, "device": "cpu",
                     "elapsed_s": 10.0, "metrics": last, "init": None,
                     "data": {"path": str(run), "images": 96, "repeats": 1, "bad_files": 0}}, run)
    return run


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make matplotlib unimportable for one test, as on an install without the plot extra."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def png_size(path) -> tuple[int, int]:
    """Width and height of a PNG file, after checking it is one."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        return image.size


def test_curves_show_loss_each_part_lr_rankme_std_and_knn(tmp_path):
    from training.plot import panels
    from training.run_summary import read_metrics

    write_health_log(tmp_path / "bt")
    shown = panels(read_metrics(tmp_path / "bt"))
    assert [p.title for p in shown] == ["loss", "part: on_diag", "part: off_diag", "learning rate",
                                        "RankMe (of 32)", "feature std (1 = spread, 0 = collapse)",
                                        "online kNN top-1"]
    assert shown[0].steps == [1, 2, 3, 4, 5, 6] and shown[0].values[0] == pytest.approx(100.0)
    assert shown[2].values == pytest.approx([2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # off_diag, as logged
    assert shown[-1].steps == [0, 6] and shown[-1].values == [0.25, 0.5]  # before training, then the last step
    assert shown[4].ceiling[-1] == 32

    write_health_log(tmp_path / "vicreg", parts=VICREG_PARTS, knn=False)
    titles = [p.title for p in panels(read_metrics(tmp_path / "vicreg"))]
    assert titles[1:4] == [f"part: {name}" for name in VICREG_PARTS]
    assert "online kNN top-1" not in titles  # no monitor, no empty panel


def test_long_noisy_series_get_a_running_mean(tmp_path):
    from training.plot import draw, running_mean
    from training.run_summary import read_metrics

    assert running_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    write_health_log(tmp_path / "run", steps=45, knn=False)
    axes = [ax for ax in draw(read_metrics(tmp_path / "run"), "long").axes if ax.get_visible()]
    assert [len(ax.lines) for ax in axes] == [2, 2, 2, 1, 2, 1]  # loss and parts: raw + mean; RankMe: + ceiling


def test_collapse_alarms_are_marked_on_every_panel(tmp_path):
    from training.plot import draw
    from training.run_summary import read_metrics

    write_health_log(tmp_path / "run", knn=False)
    rows = read_metrics(tmp_path / "run")
    rows[3]["alarm"] = ["feature std 0.010 < 0.05"]
    figure = draw(rows, "alarm")
    panels_drawn = [ax for ax in figure.axes if ax.get_visible()]
    assert len(panels_drawn) == 6
    for ax in panels_drawn:  # axvline draws a line whose x is the alarm's step at both ends
        assert [list(line.get_xdata()) for line in ax.lines].count([rows[3]["step"]] * 2) == 1


def test_plot_command_writes_one_png(tmp_path, capsys):
    from training.__main__ import main

    write_health_log(tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 0
    width, height = png_size(tmp_path / "run" / "curves.png")
    assert width > height > 300  # two rows of four panels
    assert main(["plot", str(tmp_path / "run"), "-o", str(tmp_path / "elsewhere.png")]) == 0
    assert png_size(tmp_path / "elsewhere.png") == (width, height)
    assert "elsewhere.png" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["no log", "no training record yet", "missing folder for -o"])
def test_plot_errors_are_one_line(tmp_path, capsys, case):
    from training.__main__ import main

    run = tmp_path / "run"
    run.mkdir()
    argv = ["plot", str(run)]
    if case == "no training record yet":
        (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "epoch": 0, "knn_top1": 0.2}) + "\n")
    if case == "missing folder for -o":
        write_health_log(run)
        argv += ["-o", str(tmp_path / "absent" / "c.png")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("training: error: ") and "\n" not in err
    assert not list(tmp_path.rglob("*.png"))


def test_missing_matplotlib_names_the_extra(tmp_path, capsys, no_matplotlib):
    from training.__main__ import main

    write_health_log(tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'btembed[plot]'" in err


def test_export_puts_the_curves_into_the_card(tmp_path):
    from btembed.config import ModelConfig
    from training.export import export_run

    folder = export_run(fake_run(tmp_path / "run"), tmp_path / "model")
    config = ModelConfig.load(folder)
    assert config.files[CURVES_FILE] == sha256_file(folder / CURVES_FILE)
    png_size(folder / CURVES_FILE)
    card = (folder / "README.md").read_text()
    assert f"]({CURVES_FILE})" in card and f"| {CURVES_FILE} | `{config.files[CURVES_FILE]}` |" in card
    assert "Embedder.from_pretrained('path/to/model')" in card  # the card still names the model, not the picture


def test_export_without_matplotlib_still_writes_the_model(tmp_path, no_matplotlib):
    from btembed.config import ModelConfig
    from training.export import export_run

    out = tmp_path / "model"
    out.mkdir()
    (out / CURVES_FILE).write_bytes(PNG_MAGIC)  # left by an earlier export: it must not pass for this run's
    said = []
    folder = export_run(fake_run(tmp_path / "run"), out, say=said.append)
    config = ModelConfig.load(folder)
    assert CURVES_FILE not in config.files and not (folder / CURVES_FILE).exists()
    assert said == ["training curves skipped: matplotlib is not installed (pip install 'btembed[plot]')"]
    assert "](curves.png)" not in (folder / "README.md").read_text()
    assert (folder / "model.safetensors").is_file()


def test_confusion_picture_for_thirty_classes(tmp_path):
    from btembed.probe.plot import plot_confusion, row_shares, short_name

    assert row_shares([[3, 1], [0, 0]]).tolist() == [[0.75, 0.25], [0.0, 0.0]]
    assert short_name("x" * 40) == "x" * 21 + "…"
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 4, (30, 30)) + np.diag(rng.integers(10, 30, 30))
    classes = [f"class number {i} with a long name" for i in range(30)]
    width, height = png_size(plot_confusion(classes, confusion.tolist(), tmp_path / "c.png", "thirty"))
    assert min(width, height) >= 1000  # about a third of an inch per class


def labeled_colours(folder, per_class=6):
    """folder/<colour>/N.png: three classes of noisy flat colours (raw32 features separate them)."""
    rng = np.random.default_rng(0)
    for name, colour in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-25, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    return folder


def test_probe_plot_draws_the_confusion_matrix(tmp_path, capsys):
    from btembed.cli import main

    data = labeled_colours(tmp_path / "data")
    argv = ["probe", str(data), "--features", "raw32", "--folds", "2", "--json", "--plot", str(tmp_path / "c.png")]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"] == ["blue", "green", "red"]
    png_size(tmp_path / "c.png")


def test_probe_plot_without_matplotlib_refuses_before_embedding(tmp_path, capsys, no_matplotlib):
    from btembed.cli import main

    data = labeled_colours(tmp_path / "data")
    assert main(["probe", str(data), "--features", "raw32", "--plot", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'btembed[plot]'" in err and "features:" not in err
    assert not (tmp_path / "c.png").exists()
