"""The in-process lever sweep of bench/pipeline.py (--levers): decode pool and threads, onnxruntime threads and
spinning, batch size and read-ahead, each a warm embedding of all photos with onnxruntime fp32."""
from __future__ import annotations

import statistics
import time
from pathlib import Path


def onnx_session(path: Path, threads: int, spinning: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


LEVERS = [  # (label, decode pool, decode workers, onnx threads, spinning, batch, prefetch[, decode nice])
    ("inline decode, onnx 2 thr", "thread", 0, 2, True, 64, 2),
    ("inline decode, onnx 2 thr, no spin", "thread", 0, 2, False, 64, 2),
    ("1 decode thread + onnx 2 thr", "thread", 1, 2, True, 64, 2),
    ("2 decode threads + onnx 2 thr", "thread", 2, 2, True, 64, 2),
    ("2 decode threads + onnx 2 thr, no spin", "thread", 2, 2, False, 64, 2),
    ("2 decode threads at nice +10 + onnx 2 thr", "thread", 2, 2, True, 64, 2, 10),
    ("2 decode threads at nice +10 + onnx 2 thr, no spin", "thread", 2, 2, False, 64, 2, 10),
    ("2 decode threads + onnx 1 thr", "thread", 2, 1, True, 64, 2),
    ("1 decode thread + onnx 1 thr", "thread", 1, 1, True, 64, 2),
    ("3 decode threads + onnx 2 thr", "thread", 3, 2, True, 64, 2),
    ("2 DataLoader processes + onnx 2 thr", "process", 2, 2, True, 64, 2),
    ("1 DataLoader process + onnx 2 thr", "process", 1, 2, True, 64, 2),
    ("2 decode threads, batch 16", "thread", 2, 2, True, 16, 2),
    ("2 decode threads, batch 32", "thread", 2, 2, True, 32, 2),
    ("2 decode threads, batch 128", "thread", 2, 2, True, 128, 2),
    ("2 decode threads, read-ahead 1", "thread", 2, 2, True, 64, 1),
    ("2 decode threads, read-ahead 4", "thread", 2, 2, True, 64, 4),
]


def levers(folder: Path, files: list[Path], repeat: int) -> list[dict]:
    """Warm in-process embedding of all files (onnxruntime fp32) under each setting; median of `repeat`."""
    from btembed import Embedder

    base = Embedder.from_pretrained(folder, backend="onnx", device="cpu")
    sessions = {}
    times: dict = {lv[0]: [] for lv in LEVERS}
    for _ in range(repeat):  # rounds interleave the settings so outside load hits them alike
        for label, pool, workers, threads, spin, batch, prefetch, *nice in LEVERS:
            key = (threads, spin)
            if key not in sessions:
                sessions[key] = onnx_session(base.backend.path, threads, spin)
            base.backend.session = sessions[key]
            emb = Embedder(base.backend, base.config)
            emb.decode_pool, emb.prefetch, emb.decode_nice = pool, prefetch, (nice or [0])[0]
            t = time.perf_counter()
            for b in emb.embed_batches(files, batch_size=batch, num_workers=workers, progress=False):
                assert not any(b.errors)
            times[label].append(time.perf_counter() - t)
    return [{"setting": lv[0], "decode_pool": lv[1], "decode_workers": lv[2], "onnx_threads": lv[3],
             "spinning": lv[4], "batch_size": lv[5], "read_ahead": lv[6], "decode_nice": (lv[7:] or (0,))[0],
             "img_per_s": len(files) / statistics.median(times[lv[0]])} for lv in LEVERS]
