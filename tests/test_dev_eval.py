"""training.dev_eval: a probe that fails stops the whole evaluation, and the rows finished before it are kept."""
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_task(root: Path, classes: int, per_class: int = 4) -> Path:
    """A labeled task folder of flat-colour 40-px PNGs, `classes` class folders."""
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 40), (60 * c, 30 * i, 255 - 60 * c)).save(folder / f"{i}.png")
    return root


def dev_eval(dev: Path, out: Path, *tasks: str) -> subprocess.CompletedProcess:
    """raw32 features only (no model needed), two folds, two seeds, one probe at a time."""
    return subprocess.run([sys.executable, "-m", "training.dev_eval", "btembed/default-r18", "--dev", str(dev),
                           "--tasks", *tasks, "--features", "raw32", "--folds", "2", "--seeds", "0", "1",
                           "--jobs", "1", "--out", str(out)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)


def test_a_failing_probe_stops_the_evaluation_and_keeps_finished_rows(tmp_path):
    dev = tmp_path / "dev"
    make_task(dev / "good", classes=2)
    make_task(dev / "one_class", classes=1)  # `btembed probe` refuses a folder with a single class
    make_task(dev / "zz_never", classes=2)  # queued after the failure: must not run
    out = tmp_path / "dev.json"
    proc = dev_eval(dev, out, "good", "one_class", "zz_never")
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: btembed probe ") and "one_class" in last and "one class only" in last
    assert f"rows finished before it are in {out}" in last
    # The task before the failure was measured and saved; nothing after it ran.
    rows = json.loads(out.read_text())["rows"]
    assert [(r["task"], r["features"], r["seeds"]) for r in rows] == [("good", "raw32", [0, 1])]
    assert "zz_never" not in proc.stderr

