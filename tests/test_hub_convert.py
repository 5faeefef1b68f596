"""Converting the official Barlow Twins release: both layouts bit-exact, unsafe pickles refused, honest card."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from btembed.card import parse_card
from btembed.config import ModelConfig
from hub.__main__ import main as hub_main
from btembed.modelfiles import sha256_file
from hub.convert import ConvertError, convert_official, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def trunk_state(arch: str, seed: int = 0) -> dict:
    """A random torchvision trunk's state dict without fc, as the authors' resnet50.pth holds it."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    model.fc = torch.nn.Identity()
    # Non-default running stats, so a conversion that re-initialised BN buffers would be caught.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(12345)
    return model.state_dict()


def exclude_bias_and_norm(p):
    """Mirror of the official main.py filter; pickled by reference into the LARS param groups."""
    return p.ndim == 1


def save_full_checkpoint(state: dict, path: Path, monkeypatch) -> Path:
    """The official checkpoint.pth layout: DDP-prefixed backbone, projector and bn, LARS state, epoch."""
    dim = next(v for k, v in state.items() if k.endswith("bn1.weight")).shape[0]
    width = 16
    model = {f"module.backbone.{k}": v for k, v in state.items()}
    model.update({
        "module.projector.0.weight": torch.randn(width, 512 if dim == 64 else 2048),
        "module.projector.1.weight": torch.ones(width), "module.projector.1.bias": torch.zeros(width),
        "module.projector.1.running_mean": torch.zeros(width), "module.projector.1.running_var": torch.ones(width),
        "module.projector.1.num_batches_tracked": torch.tensor(7),
        "module.projector.3.weight": torch.randn(width, width),
        "module.bn.running_mean": torch.zeros(width), "module.bn.running_var": torch.ones(width),
        "module.bn.num_batches_tracked": torch.tensor(7),
    })
    # main.py runs as a script, so its filter pickles as __main__.exclude_bias_and_norm.
    monkeypatch.setattr(exclude_bias_and_norm, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "exclude_bias_and_norm", exclude_bias_and_norm, raising=False)
    group = {"lr": 0.0, "weight_decay": 1e-6, "momentum": 0.9, "eta": 0.001,
             "weight_decay_filter": exclude_bias_and_norm, "lars_adaptation_filter": exclude_bias_and_norm}
    optimizer = {"state": {0: {"mu": torch.randn(3)}}, "param_groups": [dict(group, params=[0, 1])]}
    torch.save({"epoch": 1000, "model": model, "optimizer": optimizer}, path)
    return path


def assert_bit_exact(folder: Path, state: dict) -> None:
    """model.safetensors holds exactly the given tensors: same keys, dtypes, shapes and bits."""
    got = load_file(str(folder / "model.safetensors"))
    assert set(got) == set(state)
    for key, want in state.items():
        assert got[key].dtype == want.dtype, key
        assert torch.equal(got[key], want), key


def convert_hub_layout(tmp_path, architecture: str, out: str, official_hashes=None):
    """Save a random trunk as the torch.hub resnet50.pth layout, convert it, check it is bit-exact.

    official_hashes: pretend these files' hashes are the authors' (a list to which the saved file's is added).
    """
    state = trunk_state(architecture)
    ckpt = tmp_path / "resnet50.pth"
    torch.save(state, ckpt)
    if official_hashes is not None:
        official_hashes["resnet50.pth"] = sha256_file(ckpt)
    folder = convert_official(ckpt, tmp_path / out, onnx=False)
    assert_bit_exact(folder, state)
    return state, folder, ModelConfig.load(folder)


def test_hub_layout_converts_bit_exact_and_embeds_like_torchvision(tmp_path):
    state, folder, config = convert_hub_layout(tmp_path, "resnet18", "conv")
    pre = config.preprocess
    assert (pre.resize_size, pre.input_size, pre.interpolation, pre.crop) == (256, 224, "bilinear", "center")
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert config.license == "mit" and config.architecture == "resnet18"
    # not a ResNet-50: the authors' figures must not be attached to it
    assert "reported_metrics" not in config.source
    assert "Reported by the original authors" not in (folder / "README.md").read_text()

    from btembed import Embedder

    pixels = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    # pixels already at input size go straight to the backend (embed() would resize and crop them again)
    got = Embedder.from_pretrained(folder, backend="torch").backend(pixels, normalize=True)
    reference = torchvision.models.resnet18()
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(state)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = torch.nn.functional.normalize(reference.eval()(x), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_full_checkpoint_converts_bit_exact_with_onnx(tmp_path, monkeypatch):
    state = trunk_state("resnet18", seed=3)
    ckpt = save_full_checkpoint(state, tmp_path / "checkpoint.pth", monkeypatch)
    # The optimizer state names a function: a bare weights_only load refuses it; ours maps it to a stand-in.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    folder = convert_official(ckpt, tmp_path / "conv", name="test/official-r18")
    assert_bit_exact(folder, state)
    config = ModelConfig.load(folder)
    assert config.source["dropped"] == ["bn", "projector"] and config.source["epoch"] == 1000
    assert config.name == "test/official-r18"
    assert set(config.files) == {"model.safetensors", "model.onnx"}
    from hub.publish import onnx_parity

    assert onnx_parity(folder)["max_relative_diff"] < 1e-4


def test_resnet50_card_carries_authors_figures_clearly_marked(tmp_path, monkeypatch):
    official = {}
    monkeypatch.setattr("hub.convert.OFFICIAL_SHA256", official)
    _, folder, config = convert_hub_layout(tmp_path, "resnet50", "barlowtwins-r50", official_hashes=official)
    assert config.source["verified_official"] is True
    assert config.source["origin"].startswith("the official Barlow Twins ResNet-50 release")
    assert config.architecture == "resnet50" and config.embedding_dim == 2048
    assert config.metrics == {}  # nothing measured by us
    assert config.source["reported_metrics"]["imagenet_linear_top1"]["value"] == 73.2
    assert config.source["reported_metrics"]["imagenet_linear_top5"]["value"] == 91.0
    meta, body = parse_card((folder / "README.md").read_text())
    assert meta["library_name"] == "btembed" and meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "mit" and meta["datasets"] == ["imagenet-1k"]
    measured, reported = body.split("### Reported by the original authors (not measured by us)")
    assert "No metrics have been measured by btembed" in measured and "73.2" not in measured
    assert "| imagenet_linear_top1 | 73.2 % |" in reported and "Table 1" in reported
    assert "did not reproduce them" in reported
    assert "1000" in body and "16 V100" in body  # how it was trained, as the authors state it
    assert config.source["checkpoint_sha256"] in json.dumps(config.to_dict())


def test_a_resnet50_of_unknown_bytes_is_not_presented_as_the_authors_release(tmp_path):
    """Any fc-less ResNet-50 fits the layout: only the file's hash can say it is the official one."""
    _, folder, config = convert_hub_layout(tmp_path, "resnet50", "someones-r50")
    digest = config.source["checkpoint_sha256"]
    assert config.source["verified_official"] is False and config.training == {}
    assert "NOT verified as the authors' release" in config.source["origin"]
    card = (folder / "README.md").read_text()
    assert "released by the authors" not in card and "16 V100" not in card
    assert f"this file (sha256 {digest}) is not a known hash of that release" in card


class Payload:
    """A pickle that would create a folder when unpickled: the stand-in for malicious code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_runs_no_code(tmp_path, writer, capsys):
    # The payload is live: plain unpickling does run it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.is_dir()

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "resnet50.pth"
    evil = {"model": {"module.backbone.conv1.weight": torch.zeros(1)}, "epoch": Payload(marker)}
    if writer == "torch.save":
        torch.save(evil, ckpt)
    else:
        with open(ckpt, "wb") as f:
            pickle.dump(evil, f, protocol=2)
    assert hub_main(["convert-official", str(ckpt), "--out", str(tmp_path / "out"), "--no-onnx"]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and str(ckpt) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_wrong_files_get_one_clear_sentence(tmp_path):
    classifier = torchvision.models.resnet18().state_dict()  # has fc.*: a supervised model, not the trunk
    torch.save(classifier, tmp_path / "sup.pth")
    with pytest.raises(ConvertError, match="fc"):
        convert_official(tmp_path / "sup.pth", tmp_path / "a", onnx=False)
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "odd.pth")
    with pytest.raises(ConvertError, match="no supported torchvision trunk"):
        convert_official(tmp_path / "odd.pth", tmp_path / "b", onnx=False)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ConvertError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pth")
    with pytest.raises(ConvertError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


def test_cli_converts_through_python_m_hub(tmp_path):
    torch.save(trunk_state("resnet18", seed=5), tmp_path / "resnet50.pth")
    out = tmp_path / "folder"
    proc = subprocess.run([sys.executable, "-m", "hub", "convert-official", str(tmp_path / "resnet50.pth"),
                           "--out", str(out), "--no-onnx"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
