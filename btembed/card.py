"""Model cards: README.md of a model folder, with the YAML header the Hugging Face Hub reads.

A card shows two kinds of numbers and never mixes them: `config.metrics` (measured by btembed, each with its
protocol) and `config.source["reported_metrics"]` (figures published by the weights' original authors, which we
copy with their reference and did not reproduce).
"""
from __future__ import annotations

import yaml

from .config import ModelConfig

# Shown for every model; a config adds its own under training["limits"].
GENERIC_LIMITS = (
    "Embeddings capture visual similarity as learned without labels; they are not calibrated class scores.",
    "Input is resized and center-cropped as listed under Preprocessing: content near the image borders of "
    "non-square photos is cut off.",
    "Biases of the training data carry over to the embeddings; check results on your own images before relying "
    "on them.",
)

# Order and wording of the training facts a card lists first; other keys follow as they come.
TRAINING_FIELDS = (
    ("recipe", "Recipe"), ("data", "Data"), ("epochs", "Epochs"), ("batch_size", "Batch size"),
    ("optimizer", "Optimizer"), ("hardware", "Hardware"), ("time", "Training time"),
)


def method_tag(config: ModelConfig) -> str:
    """The Hub tag of the method that trained the model: the objective a btembed run names, else Barlow Twins."""
    objective = config.training.get("objective") or {}
    return str(objective.get("name", "barlow_twins")).replace("_", "-")


def card_metadata(config: ModelConfig, tags=()) -> dict:
    """The YAML header of a card as a mapping."""
    datasets = config.training.get("datasets") or []
    meta = {
        "library_name": "btembed",
        "pipeline_tag": "image-feature-extraction",
        "license": config.license or "other",
        "tags": list(dict.fromkeys(["btembed", method_tag(config), "self-supervised", "image-embeddings",
                                    config.architecture, *tags])),
    }
    if datasets:
        meta["datasets"] = list(datasets)
    return meta


def parse_card(text: str) -> tuple[dict, str]:
    """Split a card into (YAML metadata, markdown body); metadata is {} when the header is absent or broken."""
    if not text.startswith("---"):
        return {}, text
    parts = text.split("\n---", 1)
    if len(parts) != 2:
        return {}, text
    try:
        meta = yaml.safe_load(parts[0][3:]) or {}
    except yaml.YAMLError:
        return {}, text
    body = parts[1].split("\n", 1)[1] if "\n" in parts[1] else ""
    return (meta if isinstance(meta, dict) else {}), body


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """Metric mapping → [(name, {value, unit, protocol, dataset, reference})]; nested groups join with '/'."""
    rows = []
    for name, entry in metrics.items():
        full = f"{prefix}{name}"
        if isinstance(entry, dict) and "value" not in entry:
            rows += _flatten(entry, full + "/")
        elif isinstance(entry, dict):
            rows.append((full, entry))
        else:
            rows.append((full, {"value": entry}))
    return rows


def _metric_table(metrics: dict, with_reference: bool) -> list[str]:
    """A markdown table of metrics."""
    head = "| metric | value | dataset | protocol |" + (" reference |" if with_reference else "")
    lines = [head, "|---" * (5 if with_reference else 4) + "|"]
    for name, m in _flatten(metrics):
        value = f"{m['value']}{' ' + m['unit'] if m.get('unit') else ''}"
        row = f"| {name} | {value} | {m.get('dataset', '')} | {m.get('protocol', '')} |"
        lines.append(row + (f" {m.get('reference', '')} |" if with_reference else ""))
    return lines


def _training_lines(training: dict) -> list[str]:
    """Training facts as a two-column table, known fields first; 'not recorded' when empty."""
    if not training:
        return ["Not recorded for this model."]
    skip = {"datasets", "limits"}
    known = [(k, label) for k, label in TRAINING_FIELDS if k in training]
    rest = [(k, k.replace("_", " ").capitalize()) for k in training if k not in dict(TRAINING_FIELDS) and k not in skip]
    lines = ["| | |", "|---|---|"]
    for key, label in known + rest:
        value = training[key]
        if isinstance(value, (dict, list)):
            value = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        lines.append(f"| {label} | {value} |")
    return lines


def _threshold_text(config: ModelConfig) -> str:
    """The model's `btembed dedup` threshold and how it was obtained (its two metrics say on what, and how well)."""
    text = f"{config.duplicate_threshold} (`btembed dedup`'s default)"
    p, r = (config.metrics.get(f"dedup_pair_{k}") for k in ("precision", "recall"))
    if isinstance(p, dict) and isinstance(r, dict) and "value" in p and "value" in r:
        text += (f", the best F0.5 on {p.get('dataset', 'photos')}: pair precision {p['value']}, recall "
                 f"{r['value']} of the {p.get('protocol', 'pairs its groups imply')}")
    if config.duplicate_threshold_embedding_only is not None:
        text += f"; {config.duplicate_threshold_embedding_only} with `--no-pixel-check`"
    return text


def render_card(config: ModelConfig, *, description: str | None = None, tags=()) -> str:
    """A full model card: YAML header, what it is, training, metrics (measured vs reported), usage, limits."""
    pre = config.preprocess
    name = config.name or "btembed model"
    source = config.source or {}
    reported = source.get("reported_metrics") or {}
    header = "---\n" + yaml.safe_dump(card_metadata(config, tags), sort_keys=False) + "---\n"
    what = description or source.get("description") or (
        f"A Barlow Twins image encoder: a torchvision {config.architecture} trunk whose global-pooled "
        f"{config.embedding_dim}-d features serve as image embeddings.")
    body = [
        f"# {name}", "", what, "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| Architecture | torchvision `{config.architecture}` trunk, classifier (`fc`) removed |",
        f"| Embedding | {config.embedding_dim}-d float32, L2-normalized |",
        f"| Preprocessing | resize short side to {pre.resize_size} ({pre.interpolation}), "
        f"{pre.crop} crop {pre.input_size}, mean {list(pre.mean)}, std {list(pre.std)} |",
        f"| License | {config.license or 'not set'} |",
    ]
    if config.duplicate_threshold is not None:
        body.append(f"| Duplicate threshold | {_threshold_text(config)} |")
    if source.get("url"):  # the authors' own file, fetched and converted by btembed
        how = "pinned in btembed's registry" if source.get("sha256_pinned") else "trusted on first use"
        body += [f"| Source file | {source['url']} ({source.get('format', '')}) |",
                 f"| Source sha256 | `{source.get('sha256', '')}` ({how}) |",
                 f"| License of the weights | {source.get('license') or 'not stated'}"
                 + (f", {source['license_note']}" if source.get("license_note") else "")
                 + (f" — {source['license_url']}" if source.get("license_url") else "") + " |"]
        if source.get("reference"):
            body.append(f"| Paper | {source['reference']} |")
    elif source.get("kind"):
        origin = source.get("origin") or source.get("kind")
        body.append(f"| Source | {origin} |")
    body += ["", "## Training", ""] + _training_lines(config.training)
    # The training curves `training export` draws (curves.png); found by kind so the name is spelled in modelfiles only.
    for picture in (f for f in config.files if f.endswith(".png")):
        body += ["", f"![Training curves: loss and its parts, lr, RankMe, feature std, online kNN by step]({picture})"]
    body += ["", "## Metrics", "", "### Measured by btembed", ""]
    body += (_metric_table(config.metrics, with_reference=False) if config.metrics
             else ["No metrics have been measured by btembed for this model yet."])
    if reported:
        body += ["", "### Reported by the original authors (not measured by us)", "",
                 "> *Reported by the authors, not measured by btembed.* "
                 f"These figures are published by the original authors for "
                 f"{source.get('reported_for', 'the original release')}. btembed copied them with their reference "
                 "and did not reproduce them.", ""]
        body += _metric_table(reported, with_reference=True)
    repo = source.get("repo_id") or name
    if "/" not in repo:  # a bare folder name: show it as a path, not as a Hub id
        repo = f"path/to/{repo}"
    body += [
        "", "## How to use", "", "Python:", "", "```python", "from btembed import Embedder", "",
        f"embedder = Embedder.from_pretrained({repo!r})",
        "vectors = embedder.embed([\"photo.jpg\"])  # float32 [N, "
        f"{config.embedding_dim}], unit rows", "```", "",
        "Command line:", "", "```bash", f"btembed info {repo}",
        f"btembed embed photos/ --model {repo} --output vectors.npy", "```", "",
        "ONNX (no torch needed): `model.onnx` takes uint8 `[N, H, W, 3]` pixels already resized and cropped as "
        "above and returns L2-normalized float32 `[N, D]`:", "",
        "```python", "import onnxruntime as ort", "",
        "session = ort.InferenceSession(\"model.onnx\")",
        "vectors = session.run(None, {session.get_inputs()[0].name: pixels_uint8_nhwc})[0]", "```", "",
        "## Limits", "",
    ]
    body += [f"- {line}" for line in (*config.training.get("limits", ()), *GENERIC_LIMITS)]
    if config.files:
        body += ["", "## Files", "", "| file | sha256 |", "|---|---|"]
        body += [f"| {f} | `{digest}` |" for f, digest in config.files.items()]
    return header + "\n" + "\n".join(body) + "\n"
