"""What every benchmark records about the machine, and how it writes its JSON result."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def machine(**versions) -> dict:
    """CPU, usable cores, Python, the given library versions and the load average as the run ends."""
    return {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), **versions, "load_average_at_end": os.getloadavg()}


def write_result(path: Path, result: dict) -> None:
    """Write result as indented JSON (creating the folder) and say where on stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
