"""Run a table of btembed / python -m training commands in one process (one torch import) and record, for each,
its exit status, output and any exception that escaped main() — a traceback a user would have seen.

usage: python fault_worker.py TABLE.json RESULTS.json   (TABLE: [{"name", "entry": "btembed"|"training", "argv"}])
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
from pathlib import Path


def run_one(entry: str, argv: list) -> dict:
    """Call the command's main(argv) with stdout/stderr captured."""
    if entry == "btembed":
        from btembed.cli import main
    else:
        from training.__main__ import main
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - exactly what must not happen
            status, escaped = None, traceback.format_exc()
    return {"status": status, "stdout": out.buffer.getvalue().decode("utf-8", "replace"),
            "stderr": err.getvalue(), "traceback": escaped}


def main() -> None:
    table, results = sys.argv[1:3]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ is a repository-root package
    done = {}
    for row in json.loads(Path(table).read_text()):
        done[row["name"]] = run_one(row["entry"], row["argv"])
        Path(results).write_text(json.dumps(done))  # what ran so far survives a crash of a later row


if __name__ == "__main__":
    main()
