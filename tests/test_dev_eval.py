"""devdata.evaluate: a probe that fails stops the whole evaluation, and the rows finished before it are kept."""
import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest
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
    return subprocess.run([sys.executable, "-m", "devdata.evaluate", "btembed/default-r18", "--dev", str(dev),
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



def wait_for(condition, what: str, seconds: float = 30.0) -> None:
    """Poll until condition() holds (the test's stand-in for an ordering it cannot otherwise force)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("order", ["slow probe running when the other fails", "slow probe launched after"])
def test_a_failing_probe_stops_the_probes_in_flight(tmp_path, monkeypatch, capsys, order):
    """Two probes at once: when one fails, the other (which would run for 10 minutes) is terminated, or refused
    when its thread reaches the launch only after the failure (the race CI hit on a slow machine)."""
    from devdata import evaluate as module

    dev = tmp_path / "dev"
    for task in ("slow", "broken"):
        make_task(dev / task, classes=2)
    # A stand-in for `python -m btembed probe ...`: the slow task's probe sleeps, the other fails at once.
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\ncase "$*" in\n  */slow\\ *) exec sleep 600 ;;\n'
                    '  *) echo "error: the broken probe" >&2; exit 2 ;;\nesac\n')
    fake.chmod(0o755)
    monkeypatch.setattr(module.sys, "executable", str(fake))
    launched = []
    start = module.RunningProbes.start

    def start_in_order(self, argv, env):
        task = Path(argv[4]).name
        if task == "broken" and order.endswith("fails"):
            wait_for(lambda: "slow" in launched, "the slow probe to start")
        if task == "slow" and order.endswith("after"):
            wait_for(lambda: self.stopped, "the failure to stop the evaluation")
        proc = start(self, argv, env)
        launched.append(task)
        return proc

    monkeypatch.setattr(module.RunningProbes, "start", start_in_order)
    started = time.monotonic()
    code = module.main(["some/model", "--dev", str(dev), "--tasks", "slow", "broken", "--features", "raw32",
                        "--jobs", "2", "--out", str(tmp_path / "dev.json")])
    assert code == 1 and time.monotonic() - started < 60
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: btembed probe ") and "broken" in last and "the broken probe" in last
    assert not (tmp_path / "dev.json").exists()  # no row was finished
    assert launched == (["slow", "broken"] if order.endswith("fails") else ["broken"])
