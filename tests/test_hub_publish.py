"""publish: validation first, --dry-run sends nothing, the upload is a thin HfApi call; registry rules; cards."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from btembed.card import parse_card, render_card
from btembed.config import ModelConfig
from conftest import make_model_dir
from hub.__main__ import main as hub_main
from hub.publish import PublishError, add_onnx, publish, validate
from hub.registry_tools import (REGISTRY_PATH, RegistryError, check_registry, entry_from_folder, read_registry,
                                set_entry)

REPO = Path(__file__).resolve().parents[1]
MEASURED = {"devset_knn_top1": {"value": 41.5, "unit": "%", "dataset": "test devset",
                                "protocol": "weighted kNN, k=20, cosine"}}


@pytest.fixture(scope="module")
def publishable(tmp_path_factory):
    """A small model folder with licence, measured metrics, card and ONNX: everything publish asks for."""
    folder = make_model_dir(tmp_path_factory.mktemp("pub") / "tiny", seed=2)
    config = ModelConfig.load(folder)
    config.license, config.metrics = "apache-2.0", MEASURED
    config.training = {"recipe": "test", "data": "none", "epochs": 0, "hardware": "CPU", "time": "0 s"}
    config.save(folder)
    add_onnx(folder)
    (folder / "README.md").write_text(render_card(ModelConfig.load(folder)))
    return folder


class NoNetwork:
    """Stands in for HfApi: any use fails the test."""

    def __init__(self, *a, **k):
        raise AssertionError("HfApi must not be used in a dry run")


def test_dry_run_lists_files_and_sends_nothing(publishable, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)

    def no_connect(*a, **k):
        raise AssertionError("no network connection may be opened in a dry run")

    monkeypatch.setattr(socket.socket, "connect", no_connect)
    assert hub_main(["publish", str(publishable), "--repo", "org/tiny", "--dry-run"]) == 0
    out = capsys.readouterr()
    for name in ("model.safetensors", "model.onnx", "config.json", "README.md"):
        assert name in out.out
    assert "KiB" in out.out or "MiB" in out.out
    assert "nothing was sent" in out.out
    assert "ONNX parity with torch" in out.err and "loads with Embedder" in out.err


def folder_state(folder: Path) -> dict:
    """Every entry under folder (the folder itself too) → (mtime_ns, bytes or None for folders)."""
    paths = [folder, *sorted(folder.rglob("*"))]
    return {str(p.relative_to(folder)): (p.lstat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in paths}


def test_dry_run_leaves_the_folder_untouched(publishable, tmp_path, monkeypatch, capsys):
    import shutil

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", NoNetwork)
    folder = Path(shutil.copytree(publishable, tmp_path / "no-onnx"))
    (folder / "model.onnx").unlink()  # what a dry run must export to check, but not into the folder
    config = ModelConfig.load(folder)
    del config.files["model.onnx"]
    config.save(folder)
    before = folder_state(folder)
    assert hub_main(["publish", str(folder), "--repo", "org/tiny", "--dry-run"]) == 0
    assert folder_state(folder) == before
    out = capsys.readouterr()
    listed = {line.split()[0]: line for line in out.out.splitlines() if line.startswith("  ")}
    assert set(listed) == {"config.json", "model.safetensors", "model.onnx", "README.md"}
    assert "MiB" in listed["model.onnx"] and "not in the folder yet" in listed["model.onnx"]
    assert "records model.onnx" in listed["config.json"] and "was not changed" in out.out
    assert "exported model.onnx" in out.err and "ONNX parity with torch" in out.err


class RecordingApi:
    """Records the calls publish makes to HfApi and answers like the Hub would."""

    calls: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw["repo_id"], kw))

        class Commit:
            oid = "f" * 40
        return Commit()

    def create_tag(self, repo_id, **kw):
        self.calls.append(("create_tag", repo_id, kw))


def test_publish_uploads_tags_and_prints_registry_entry(publishable, monkeypatch, capsys):
    import huggingface_hub

    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert hub_main(["publish", str(publishable), "--repo", "org/tiny", "--tag", "v1", "--name", "btembed/tiny"]) == 0
    names = [c[0] for c in RecordingApi.calls]
    assert names == ["create_repo", "upload_folder", "create_tag"]
    upload = RecordingApi.calls[1][2]
    assert sorted(upload["allow_patterns"]) == ["README.md", "config.json", "model.onnx", "model.safetensors"]
    assert Path(upload["folder_path"]) == publishable
    assert RecordingApi.calls[2][2] == {"tag": "v1", "revision": "f" * 40}
    entry = json.loads(capsys.readouterr().out)["btembed/tiny"]
    assert entry["released"] is True and entry["revision"] == "f" * 40 and entry["repo_id"] == "org/tiny"
    config = ModelConfig.load(publishable)
    assert entry["files"]["model.safetensors"] == config.files["model.safetensors"]
    assert entry["files"]["model.onnx"] == config.files["model.onnx"]
    assert entry["metrics"] == MEASURED and entry["license"] == "apache-2.0"
    assert check_registry({"default": None, "models": {"btembed/tiny": entry}}) == []


def test_validation_collects_every_problem(tmp_path):
    folder = make_model_dir(tmp_path / "raw", seed=3)  # no licence, no metrics, no ONNX
    (folder / "README.md").write_text("# a card without YAML\n")
    v = validate(folder, export_missing_onnx=False)
    text = " | ".join(v.problems)
    assert "YAML header lacks" in text and "no licence" in text and "no metrics" in text
    with open(folder / "model.safetensors", "r+b") as f:  # corrupt one byte
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    v = validate(folder, export_missing_onnx=False)
    assert any("does not match the sha256" in p for p in v.problems)


def test_a_card_behind_config_metrics_is_refused(publishable, tmp_path):
    import shutil

    folder = Path(shutil.copytree(publishable, tmp_path / "behind"))
    config = ModelConfig.load(folder)
    config.metrics["linear_top1_mine"] = {"value": 0.5, "dataset": "mine", "protocol": "linear"}
    config.save(folder)  # the card was rendered before this metric
    v = validate(folder, export_missing_onnx=False)
    assert any("README.md does not show linear_top1_mine from config.json" in p for p in v.problems), v.problems


@pytest.mark.parametrize("repo", ["not a repo id", "justname", "org/na me"])
def test_a_bad_repo_id_is_refused_before_any_check(publishable, repo, monkeypatch):
    monkeypatch.setattr("hub.publish.validate", lambda *a, **k: pytest.fail("validated a folder for a bad repo id"))
    with pytest.raises(PublishError, match="is not a Hub repo id ORG/NAME"):
        publish(publishable, repo, dry_run=True)


def test_an_intermediate_model_is_published_only_on_purpose(publishable, tmp_path):
    import shutil

    folder = Path(shutil.copytree(publishable, tmp_path / "half"))
    config = ModelConfig.load(folder)
    config.training = {**config.training, "finished": False, "epochs": 10, "epochs_completed": 4.5}
    config.save(folder)
    refused = validate(folder, export_missing_onnx=False)
    assert any("did not finish (4.5 of 10 epochs)" in p and "--allow-unfinished" in p for p in refused.problems)
    allowed = validate(folder, export_missing_onnx=False, allow_unfinished=True)
    assert not any("finish" in p for p in allowed.problems)
    assert any("published on purpose" in c for c in allowed.checks)


def test_publish_cli_refuses_unfit_folder_in_one_line(tmp_path):
    folder = make_model_dir(tmp_path / "raw", seed=3)
    proc = subprocess.run([sys.executable, "-m", "hub", "publish", str(folder), "--repo", "org/x", "--dry-run",
                           "--no-onnx"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "not fit to publish" in errors[0] and "would upload" not in proc.stdout


def test_onnx_that_disagrees_is_refused(publishable, tmp_path):
    import shutil

    other = make_model_dir(tmp_path / "other", seed=9)
    folder = tmp_path / "mixed"
    shutil.copytree(publishable, folder)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")  # weights no longer match model.onnx
    config = ModelConfig.load(folder)
    config.files["model.safetensors"] = ModelConfig.load(other).files["model.safetensors"]
    config.save(folder)
    v = validate(folder)
    assert any("model.onnx disagrees" in p for p in v.problems), v.problems


def test_shipped_registry_follows_the_rules():
    registry = read_registry(REGISTRY_PATH)
    assert check_registry(registry) == []
    r50 = registry["models"]["btembed/r50"]
    assert r50["released"] is False and r50["revision"] is None and r50["files"] == {}


def test_registry_add_refuses_invented_entries(publishable, tmp_path):
    path = tmp_path / "registry.json"
    path.write_text(REGISTRY_PATH.read_text())
    entry = entry_from_folder(publishable, "org/tiny", None)
    assert entry["released"] is False and entry["files"] == {}  # no upload, no pins
    set_entry("btembed/tiny", entry, path=path)
    assert read_registry(path)["models"]["btembed/tiny"]["revision"] is None
    with pytest.raises(RegistryError, match="40-hex"):
        set_entry("bad", dict(entry, released=True, revision="main"), path=path)
    with pytest.raises(RegistryError, match="must be an embedded model"):
        set_entry("btembed/tiny", entry, make_default=True, path=path)
    assert "bad" not in read_registry(path)["models"]  # refused writes leave the file as it was
    assert hub_main(["registry", "add", str(publishable), "--name", "btembed/t2", "--repo", "org/t2",
                     "--revision", "a" * 40, "--registry", str(path)]) == 0
    t2 = read_registry(path)["models"]["btembed/t2"]
    assert t2["released"] and t2["files"]["model.safetensors"] == ModelConfig.load(publishable).files[
        "model.safetensors"]
    assert hub_main(["registry", "check", "--registry", str(path)]) == 0


def test_card_template_sections(publishable):
    meta, body = parse_card((publishable / "README.md").read_text())
    assert meta == {"library_name": "btembed", "pipeline_tag": "image-feature-extraction", "license": "apache-2.0",
                    "tags": ["btembed", "barlow-twins", "self-supervised", "image-embeddings", "resnet18"]}
    for heading in ("## Model", "## Training", "## Metrics", "### Measured by btembed", "## How to use",
                    "## Limits", "## Files"):
        assert heading in body
    assert "| devset_knn_top1 | 41.5 % | test devset | weighted kNN, k=20, cosine |" in body
    assert "Reported by the original authors" not in body
    assert "import onnxruntime" in body and "Embedder.from_pretrained" in body and "btembed embed" in body
