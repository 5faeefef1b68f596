"""`btembed` under torchrun with rank 1 killed (SIGKILL) as soon as its first batch is in its shard file.

usage: torchrun --standalone --nproc_per_node=2 tests/shard_kill_worker.py index DIR ...
"""
from __future__ import annotations

import os
import signal
import sys

from btembed.search import shardfile

if os.environ.get("RANK") == "1":
    _write = shardfile.ShardWriter.write

    def _write_then_die(self, records, vectors):
        _write(self, records, vectors)
        os.kill(os.getpid(), signal.SIGKILL)

    shardfile.ShardWriter.write = _write_then_die

from btembed.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
