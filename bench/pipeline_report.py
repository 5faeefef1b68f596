"""The tables bench/pipeline.py prints, from whatever its run measured."""
from __future__ import annotations


def report(r: dict) -> None:
    """The tables on stdout, from whatever was measured."""
    d, nv = r.get("decode") or {}, r.get("naive") or {}
    print(f"\n{r['n_photos']} JPEGs, {r['model']}, {r['machine']['cores']} cores")
    if d:
        print(f"decode+resize per image, one core: draft {d['draft_decode_resize_core_ms']:.1f} ms, "
              f"full {d['full_decode_resize_core_ms']:.1f} ms")
    if nv:
        print(f"(a) naive loop: {nv['img_per_s']:.1f} img/s ({100 * nv['decode_share']:.0f} % decode+preprocess)")
    int8 = r.get("int8") or {}
    if int8.get("parity_vs_fp32"):
        p, q = int8["parity_vs_fp32"], int8["quantization"]
        print(f"int8 export of the ResNet-50: {q['method']} calibration, kept in fp32: "
              f"{', '.join(q['kept_fp32']) or 'nothing'}; parity on {p['images']} held-apart photos: recall@10 "
              f"{p['recall_at_10']:.3f}, mean cosine {p['mean_cosine']:.4f} (random weights: a pessimistic test)")
    nan = float("nan")
    if r.get("paths"):
        print(f"\n{'path':48} {'runs':>5} {'model-only':>10} {'1 thread':>8} {'e2e':>6} {'e2e/model':>9} "
              f"{'e2e/naive':>9} {'core-cost bound':>15} {'peak RSS':>9}")
        for p in r["paths"]:
            print(f"{p['path']:48} {p.get('precision_run', ''):>5} {p['model_only_img_per_s']:10.1f} "
                  f"{p.get('model_only_one_thread_img_per_s') or nan:8.1f} {p['e2e_img_per_s']:6.1f} "
                  f"{p['e2e_over_model_only']:9.2f} {p.get('e2e_over_naive', nan):9.2f} "
                  f"{p.get('core_cost_bound_img_per_s', nan):15.1f} {p['peak_rss_mib']:7.0f} MiB")
    for p in r.get("embedded_default") or []:
        why = f" — auto: {p['auto_reason']}" if p.get("auto_reason") else ""
        print(f"{p['path']:60} ran {p['precision_run']}: model-only {p['model_only_img_per_s']:.1f}, "
              f"e2e {p['e2e_img_per_s']:.1f} img/s{why}")
    for lv in r.get("levers") or []:
        print(f"  lever {lv['setting']:44} {lv['img_per_s']:6.1f} img/s")
    if r.get("device_decode_on_cpu_img_per_s"):
        print(f"GPU input path run on this CPU (decode_jpeg + tensor resize, torch bf16): "
              f"{r['device_decode_on_cpu_img_per_s']:.1f} img/s")
    s = r.get("search") or {}
    if s.get("median_seconds") is not None:
        print(f"\n(d) cold search: {s['median_seconds']:.2f} s (query inside the folder "
              f"{s['query_inside_folder_median_seconds']:.2f} s; goal ≤ 2 s); torch imported: "
              f"{s['torch_imported']}; `import torch` alone {s['import_torch_seconds']:.2f} s")
    memory_rows = r.get("memory")
    for m in memory_rows if isinstance(memory_rows, list) else []:
        print(f"(e) {m['files']:6d} files, batch {m['batch_size']:3d}: peak RSS {m['peak_rss_mib']:.0f} MiB, "
              f"{m['seconds']:.1f} s")
