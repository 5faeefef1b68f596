"""Units of training/: loss formula, LARS and schedule, config, augmentation seeding, sampler, health, r50 step."""
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import ConfigError, TrainConfig, apply_overrides, load_recipe, recipe_names
from training.data import ResumableSampler, TwoViewDataset, collate_views, decode_files, make_loader
from training.lars import LARS, lr_scale, param_groups, set_lr
from training.metrics import HealthLog, normalized_std, rankme
from training.objectives import Views, get
from training.objectives.barlow_twins import barlow_twins_loss, off_diagonal


def reference_loss(z1, z2, lambd):
    """The paper's formula, written independently in float64 numpy."""
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + 1e-5)
    b = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + 1e-5)
    c = a.T @ b / len(z1)
    on = ((1 - np.diag(c)) ** 2).sum()
    off = (c ** 2).sum() - (np.diag(c) ** 2).sum()
    return on + lambd * off, on, off


@pytest.mark.parametrize("n,d", [(32, 16), (64, 128)])
def test_loss_matches_independent_formula(n, d):
    g = torch.Generator().manual_seed(n + d)
    z1 = torch.randn(n, d, generator=g) * 2 + 3
    z2 = 0.5 * z1 + torch.randn(n, d, generator=g)
    loss, parts = barlow_twins_loss(z1, z2, lambd=0.0051)
    want, on, off = reference_loss(z1.numpy(), z2.numpy(), 0.0051)
    assert abs(loss.item() - want) <= 1e-4 * want
    assert parts["on_diag"].item() == pytest.approx(on, rel=1e-4)
    assert parts["off_diag"].item() == pytest.approx(off, rel=1e-4)


def test_loss_is_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = barlow_twins_loss(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    want = reference_loss(z1.bfloat16().float().numpy(), z2.bfloat16().float().numpy(), 0.0051)[0]
    assert loss.item() == pytest.approx(want, rel=1e-4)


def test_multi_crop_loss_is_the_mean_over_pairs_and_logs_the_large_pair():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    small = (z1 + torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g))
    loss, parts = get("barlow_twins", lambd=0.0051).loss(Views(z=(z1, z2, *small)))
    pairs = [(z1, z2)] + [(s, z) for s in small for z in (z1, z2)]
    want = np.mean([reference_loss(a.numpy(), b.numpy(), 0.0051)[0] for a, b in pairs])
    assert loss.item() == pytest.approx(want, rel=1e-4)
    _, on, off = reference_loss(z1.numpy(), z2.numpy(), 0.0051)
    assert parts["on_diag"].item() == pytest.approx(on, rel=1e-4)
    assert parts["off_diag"].item() == pytest.approx(off, rel=1e-4)


def test_off_diagonal():
    m = torch.arange(9.0).view(3, 3)
    assert off_diagonal(m).tolist() == [1, 2, 3, 5, 6, 7]


def test_lars_adapts_weights_and_excludes_biases():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    groups = param_groups(model, lr_weights=0.1, lr_biases=0.01)
    assert [len(g["params"]) for g in groups] == [1, 3]  # Linear weight | Linear bias, BN weight, BN bias
    opt = LARS(groups, weight_decay=1e-2, momentum=0.9, eta=0.001)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    w0, b0 = before[0], before[1]
    w, b = model[0].weight.detach(), model[0].bias.detach()
    # Weights: the step has norm lr * eta * |w| whatever the gradient scale (first step: no momentum yet).
    assert (w - w0).norm().item() == pytest.approx(0.1 * 0.001 * w0.norm().item(), rel=1e-3)
    # Biases/BN: plain SGD, no decay, no adaptation.
    assert torch.allclose(b0 - b, torch.full_like(b, 0.01))
    state = opt.state_dict()
    assert [g["exclude"] for g in state["param_groups"]] == [False, True]


def test_schedule_warmup_then_cosine_to_final_ratio():
    assert lr_scale(0, 100, 10, 0.001) == 0.0
    assert lr_scale(5, 100, 10, 0.001) == pytest.approx(0.5)
    assert lr_scale(10, 100, 10, 0.001) == pytest.approx(1.0)
    assert lr_scale(55, 100, 10, 0.001) == pytest.approx(0.5 * (1 + 0.001))
    assert lr_scale(100, 100, 10, 0.001) == pytest.approx(0.001)
    opt = LARS(param_groups(torch.nn.Linear(2, 2), 0.4, 0.02))
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.01]


def test_recipes_load_and_overrides_are_typed():
    assert {"imagenet-r50", "cpu-tiny", "cpu-default"} <= set(recipe_names())
    paper = load_recipe("imagenet-r50")
    assert (paper.projector, paper.objective["lambd"], paper.batch_size, paper.epochs) == ([8192] * 3, 0.0051, 2048,
                                                                                          1000)
    assert (paper.lr_weights, paper.lr_biases, paper.lars_eta, paper.warmup_epochs) == (0.2, 0.0048, 0.001, 10)
    assert paper.blur_p == (1.0, 0.1) and paper.solarize_p == (0.0, 0.2) and paper.interpolation == "bicubic"
    c = apply_overrides(paper, ["batch_size=64", "projector=[32, 32]", "amp=none", "lr_weights=1"])
    assert (c.batch_size, c.projector, c.amp, c.lr_weights) == (64, [32, 32], "none", 1.0)
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) batchsize \(did you mean batch_size\?\)"):
        apply_overrides(paper, ["batchsize=64"])
    with pytest.raises(ConfigError, match="batch_size must be an int"):
        apply_overrides(paper, ["batch_size=big"])
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("override, message", [
    ("log_every=0", "log_every must be at least 1, not 0"),  # was a ZeroDivisionError after step 1
    ("monitor_every=0", "monitor_every must be at least 1"),
    ("num_workers=-1", "num_workers must be at least 0"),
    ("image_size=0", "image_size must be at least 8"),
    ("max_steps=-3", "max_steps must be at least 0"),
    ("lr_weights=-1", "lr_weights must be 0 or more"),  # trained with a negative lr before
    ("crop_scale=[1.0,0.2]", "0 < smallest <= largest <= 1"),
    ("local_scale=[0,0.2]", "0 < smallest <= largest <= 1"),
])
def test_values_out_of_range_are_refused_up_front(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(load_recipe("cpu-tiny"), [override])


def test_an_unreadable_checkpoint_is_one_clear_error(tmp_path):
    from training.checkpoint import load_checkpoint

    for junk in (b"hello\n", os.urandom(200), b""):
        (tmp_path / "checkpoint.pt").write_bytes(junk)
        with pytest.raises(ConfigError, match="is not a readable training checkpoint .*move it away"):
            load_checkpoint(tmp_path)
    torch.save(torch.zeros(2), tmp_path / "checkpoint.pt")  # a torch file, not one of ours
    with pytest.raises(ConfigError, match="is not a btembed training checkpoint"):
        load_checkpoint(tmp_path)


def test_device_names_are_checked(monkeypatch):
    from btembed.errors import BtembedError
    from training.distributed import setup

    with pytest.raises(BtembedError, match="device must be auto, cpu, cuda or cuda:N, not 'gpu'"):
        setup("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BtembedError, match="device 'cuda:1' asked for, but torch sees no CUDA GPU here"):
        setup("cuda:1")
    assert setup("cpu").device == torch.device("cpu")


def _photo_files(tmp_path, n=6):
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def test_views_depend_only_on_seed_epoch_and_index(tmp_path):
    files = _photo_files(tmp_path)
    config = apply_overrides(load_recipe("cpu-tiny"), ["image_size=24", "blur_p=[1.0, 1.0]"])
    ds = TwoViewDataset(files, config)
    torch.manual_seed(123)
    (a1, b1), _ = ds[(0, 3)]
    torch.manual_seed(456)  # the caller's RNG does not matter ...
    (a2, b2), _ = ds[(0, 3)]
    assert a1.dtype == torch.uint8 and a1.shape == (3, 24, 24)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    (a3, _), _ = ds[(1, 3)]  # ... but a new epoch gives new crops
    assert not torch.equal(a1, a3)
    state = torch.get_rng_state()
    ds[(0, 1)]
    assert torch.equal(state, torch.get_rng_state())  # and the main process's RNG stream is left alone


def test_multi_crop_adds_small_views_and_a_step_trains_on_them(tmp_path):
    from training.loop import Trainer

    data = tmp_path / "data"
    data.mkdir()
    files = _photo_files(data, 8)
    config = apply_overrides(load_recipe("cpu-tiny"), ["image_size=24", "local_crops=2", "local_size=12",
                                                       "batch_size=4", "projector=[16]", "num_workers=0",
                                                       "max_steps=2", "log_every=1"])
    views, error = TwoViewDataset(files, config)[(0, 1)]
    assert error is None and [tuple(v.shape) for v in views] == [(3, 24, 24)] * 2 + [(3, 12, 12)] * 2
    assert not torch.equal(views[2], views[3])  # each small view is its own crop
    batch, _ = collate_views([TwoViewDataset(files, config)[(0, i)] for i in range(3)])
    assert [tuple(b.shape) for b in batch] == [(3, 3, 24, 24)] * 2 + [(3, 3, 12, 12)] * 2
    trainer = Trainer(config, data, tmp_path / "run", device="cpu", progress=False)
    z, _, _ = trainer.model(*[torch.randn(4, 3, s, s) for s in (24, 24, 12, 12)])
    assert len(z) == 4 and all(v.shape == z[0].shape for v in z)
    before = trainer.model.trunk.trunk.conv1.weight.detach().clone()
    record = trainer.fit()
    assert trainer.step == 2 and math.isfinite(record["loss"])
    assert not torch.equal(before, trainer.model.trunk.trunk.conv1.weight)
    with pytest.raises(ConfigError, match="local_crops"):
        apply_overrides(config, ["local_crops=-1"])


def test_bad_files_are_dropped_and_reported(tmp_path):
    files = _photo_files(tmp_path, 3)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    ds = TwoViewDataset(files + [bad], load_recipe("cpu-tiny"))
    (x1, x2), errors = collate_views([ds[(0, i)] for i in range(4)])
    assert x1.shape[0] == x2.shape[0] == 3
    assert len(errors) == 1 and errors[0][0] == str(bad)


def test_decode_cache_gives_the_same_views_and_errors(tmp_path):
    files = _photo_files(tmp_path, 3)
    big = tmp_path / "big.jpg"  # a JPEG large enough for draft decoding, which the cache must reproduce
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 420, 3), dtype=np.uint8)).save(big, quality=90)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    files += [big, bad]
    config = apply_overrides(load_recipe("cpu-tiny"), ["decode_size=64", "repeats=2"])
    decoded = decode_files(files, config.decode_size, threads=2)
    assert decoded[3].shape[2] == 3 and min(decoded[3].shape[:2]) < 300  # decoded at reduced scale
    plain, cached = TwoViewDataset(files, config), TwoViewDataset(files, config, decoded)
    for key in [(0, i) for i in range(len(files))] + [(1, 3), (2, 8)]:
        (views, error), (cached_views, cached_error) = plain[key], cached[key]
        assert error == cached_error
        if views is not None:
            assert all(torch.equal(a, b) for a, b in zip(views, cached_views))
    assert cached[(0, 4)][0] is None and cached[(0, 4)][1][0] == str(bad)  # the bad file is named, as before
    loader, _ = make_loader(files, apply_overrides(config, ["decode_cache=true", "num_workers=0"]), 0, 1, False)
    assert loader.dataset.decoded is not None and len(loader.dataset.decoded) == len(files)


def test_sampler_resumes_mid_epoch():
    data = list(range(20))
    full = ResumableSampler(data, num_replicas=2, rank=1, seed=7)
    full.set_position(3)
    keys = list(full)
    assert all(e == 3 for e, _ in keys) and len(keys) == 10
    part = ResumableSampler(data, num_replicas=2, rank=1, seed=7)
    part.set_position(3, start=4)
    assert list(part) == keys[4:] and len(part) == 6


def test_health_metrics_and_collapse_alarm():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(256, 32, generator=g)
    assert rankme(spread) > 25 and normalized_std(spread) > 0.8
    collapsed = torch.ones(256, 32) + 1e-4 * torch.randn(256, 32, generator=g)
    assert rankme(collapsed) < 2 and normalized_std(collapsed) < 0.01
    lines = []
    log = HealthLog(None, load_recipe("cpu-tiny"), total_steps=10, write=lines.append)
    parts = {"on_diag": torch.tensor(1.0), "off_diag": torch.tensor(2.0)}
    log.update(1.0102, parts, collapsed[:32], collapsed[:64], samples=64, bad=0)
    record = log.emit(step=1, epoch=0, lr=0.1)
    assert record["alarm"] and "COLLAPSE ALARM" in lines[-1]
    log.update(1.0102, parts, spread[:32], spread[:64], samples=64, bad=0)
    record = log.emit(step=2, epoch=0, lr=0.1)
    assert record["alarm"] == [] and "COLLAPSE" not in lines[-1]


def test_imagenet_r50_recipe_runs_one_step_shrunken(tmp_path):
    """The paper recipe builds (ResNet-50, zero-init residual, 3-layer projector, LARS) and trains one step."""
    from training.loop import Trainer

    data = tmp_path / "data"
    data.mkdir()
    _photo_files(data, 8)
    config = apply_overrides(load_recipe("imagenet-r50"), [
        "image_size=32", "batch_size=4", "projector=[64, 64, 64]", "num_workers=0", "max_steps=1", "log_every=1",
        "decode_size=0"])
    trainer = Trainer(config, data, tmp_path / "run", device="cpu", progress=False)
    trunk = trainer.model.trunk.trunk
    assert type(trunk).__name__ == "ResNet" and trunk.layer4[-1].bn3.weight.abs().sum() == 0  # zero_init_residual
    linears = [m for m in trainer.model.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias) for m in linears] == [(2048, 64, None), (64, 64, None),
                                                                           (64, 64, None)]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 4 / 256)  # base lr x batch/256
    record = trainer.fit()
    assert trainer.step == 1 and math.isfinite(record["loss"])
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_fp16_grad_scaler_path_runs_on_cpu(tmp_path):
    """The GPU's fp16 + GradScaler code path, exercised on CPU: the scaler state is checkpointed."""
    from training.loop import Trainer

    data = tmp_path / "data"
    data.mkdir()
    _photo_files(data, 8)
    config = apply_overrides(load_recipe("cpu-tiny"), ["amp=fp16", "max_steps=1", "batch_size=4", "projector=[16]"])
    trainer = Trainer(config, data, tmp_path / "run", device="cpu", progress=False)
    assert trainer.scaler.is_enabled()
    trainer.fit()
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["scaler"]["scale"] > 0 and ck["step"] == 1


def test_time_budget_schedule_length():
    from training.budget import SAFETY, fitted_steps, timing_window

    # 10 min budget, 1 min spent, 0.5 s per step: (9 min x (1 - SAFETY)) / 0.5 s more steps after step 50.
    steps, warning = fitted_steps(600, 60, 0.5, step=50, full_steps=5000, warmup_steps=358)
    assert steps == 50 + math.floor(540 * (1 - SAFETY) / 0.5) and warning == ""
    # Never longer than the recipe's epochs.
    assert fitted_steps(10 ** 6, 60, 0.5, step=50, full_steps=2685, warmup_steps=358) == (2685, "")
    # A budget that ends inside the warm-up: finish it, one cosine step, and warn.
    steps, warning = fitted_steps(30, 29, 0.5, step=50, full_steps=2685, warmup_steps=358)
    assert steps == 359 and "ends inside the lr warm-up" in warning
    # A recipe whose warm-up outlasts its epochs keeps the epochs' length when the budget allows it.
    assert fitted_steps(10 ** 6, 0, 0.5, step=5, full_steps=10, warmup_steps=12) == (10, "")
    # The timed window sits inside the warm-up, after its first fifth.
    assert timing_window(358) == (10, 50) and timing_window(12) == (2, 12)
    with pytest.raises(ConfigError, match="warm-up of at least 2 steps"):
        timing_window(1)


def test_resume_keeps_the_schedule_a_time_budget_decided(tmp_path):
    from training.loop import resume_config

    saved = load_recipe("cpu-tiny").replace(time_budget=5.0, schedule_steps=13).to_dict()
    again = load_recipe("cpu-tiny").replace(time_budget=5.0)  # the same command line: schedule_steps unset
    assert resume_config(again, saved, tmp_path).schedule_steps == 13
    with pytest.raises(ConfigError, match="schedule_steps=13"):
        resume_config(again.replace(schedule_steps=20), saved, tmp_path)
    with pytest.raises(ConfigError, match="time_budget and schedule_steps must be 0"):
        again.replace(time_budget=-1)


def test_command_line_mistakes_are_one_line_errors(tmp_path, capsys):
    """Each of these ended in a traceback (or ran on silently) before."""
    from training.__main__ import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in _photo_files(tmp_path, n=10):
        path.rename(photos / path.name)
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "odd-run").mkdir()
    (tmp_path / "odd-run" / "metrics.jsonl").write_text("not json\n")
    cases = [
        (["fit", "--recipe", str(tmp_path / "empty.yaml")], "empty.yaml is empty; a recipe lists its config keys"),
        (["fit", "--recipe", str(tmp_path / "broken.yaml")], "broken.yaml is not valid YAML at line 2, column 1"),
        (["fit", "--recipe", "cpu-tiny", "--out", str(tmp_path / "a-file")], "is a file; give a folder for the run"),
        (["fit", "--recipe", "cpu-tiny", "--out", str(tmp_path / "odd-run")], "line 1 is not a JSON record"),
        (["linear-eval", "m", "--data", str(photos), "--device", "gpu"], "device must be auto, cpu, cuda or cuda:N"),
    ]
    for argv, message in cases:
        if argv[0] == "fit" and "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "run")]
        argv = [*argv, "--data", str(photos)] if argv[0] == "fit" else argv
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    for argv, message in ((["--val-fraction", "1"], "must be between 0 and 1"),
                          (["--epochs", "0"], "--epochs: must be at least 1"),
                          (["--workers", "-1"], "--workers: must be at least 0")):
        with pytest.raises(SystemExit):
            main(["linear-eval", "m", "--data", str(photos), *argv])
        assert message in capsys.readouterr().err
