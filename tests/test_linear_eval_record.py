"""linear-eval --record writes metrics only into a model folder of the user's own, never into a shared copy."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from btembed.config import ModelConfig
from btembed.errors import ModelError
from training.linear_eval import LinearEvalConfig, linear_eval

FAST = LinearEvalConfig(epochs=1, batch_size=4, num_workers=0, augment=False)


@pytest.fixture
def labeled(tmp_path, photo_paths):
    """Two classes of three real photos each."""
    root = tmp_path / "labeled"
    for i, p in enumerate(photo_paths):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "ab"[i % 2] / p.name)
    return root


def state(folder: Path) -> dict:
    """Every file below folder (other tests may have left an .onnx-cache/ in the shared fixture), bytes and mtime."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_record_refuses_shared_copies(tiny_model_dir, labeled, tmp_path, monkeypatch, capsys):
    snapshot = Path(shutil.copytree(tiny_model_dir, tmp_path / "hub" / "models--org--m" / "snapshots" / "abc123"))
    embedded = Path(shutil.copytree(tiny_model_dir, tmp_path / "package" / "weights" / "tiny"))
    monkeypatch.setattr("btembed.modelfiles.embedded_dir", lambda: tmp_path / "package" / "weights")
    for folder, where in ((snapshot, "Hugging Face cache snapshot"), (embedded, "embedded in the btembed package")):
        before = state(folder)
        with pytest.raises(ModelError, match=f"{where}.*local model folder"):
            linear_eval(str(folder), labeled, config=FAST, device="cpu", record=True)
        assert state(folder) == before
    # Without --record the same folder evaluates fine; a folder of one's own gets the metric.
    assert "top1" in linear_eval(str(snapshot), labeled, config=FAST, device="cpu")
    own = Path(shutil.copytree(tiny_model_dir, tmp_path / "own"))
    linear_eval(str(own), labeled, config=FAST, device="cpu", record=True)
    assert "linear_top1_labeled" in ModelConfig.load(own).metrics
    assert "| linear_top1_labeled |" in (own / "README.md").read_text()  # the generated card follows
    # A card written by hand is left to its author, who is told what to add.
    (own / "README.md").write_text("# my own card\n")
    linear_eval(str(own), labeled, config=FAST, device="cpu", record=True)
    assert (own / "README.md").read_text() == "# my own card\n"
    assert "add linear_top1_labeled to it before publishing" in capsys.readouterr().err
