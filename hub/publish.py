"""Publish a model folder to the Hugging Face Hub: validate everything locally first, then one thin upload."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from btembed.card import parse_card
from btembed.config import ModelConfig
from btembed.errors import BtembedError
from btembed.modelfiles import CURVES_FILE, ONNX_FILE, WEIGHTS_FILE, sha256_file

# What a published repo holds, in upload order of importance (the card shows the training curves when present).
PUBLISH_FILES = ("config.json", WEIGHTS_FILE, ONNX_FILE, "README.md", CURVES_FILE)
CARD_KEYS = ("library_name", "pipeline_tag", "license")
PARITY_TOLERANCE = 1e-4  # fp32 ONNX vs torch, relative L2 per row (the ONNX issue's bar)


class PublishError(BtembedError):
    """A model folder that is not fit to publish, or an upload that failed."""


@dataclass
class Validation:
    """What validate() checked: passed checks, problems found, and the files to upload."""

    folder: Path
    checks: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    files: list = field(default_factory=list)  # [(name, size in bytes)]

    def ok(self, what: str) -> None:
        """Record a passed check."""
        self.checks.append(what)

    def fail(self, what: str) -> None:
        """Record a problem."""
        self.problems.append(what)


def _check_hashes(v: Validation, config: ModelConfig) -> None:
    """Every file named in config.files exists and matches; weights and (when present) ONNX are recorded."""
    for name in (WEIGHTS_FILE, ONNX_FILE):
        if (v.folder / name).is_file() and name not in config.files:
            v.fail(f"{name} has no sha256 in config.json 'files'")
    for name, digest in config.files.items():
        path = v.folder / name
        if not path.is_file():
            v.fail(f"config.json records {name} but the folder has no such file")
        elif sha256_file(path) != digest:
            v.fail(f"{name} does not match the sha256 recorded in config.json")
        else:
            v.ok(f"sha256 of {name} matches config.json")


def _check_card(v: Validation, config: ModelConfig) -> None:
    """README.md has the YAML metadata, a licence agreeing with config.json, and metrics."""
    card = v.folder / "README.md"
    if not card.is_file():
        v.fail("README.md (the model card) is missing; render it with btembed.card.render_card")
        return
    meta, body = parse_card(card.read_text())
    missing = [k for k in CARD_KEYS if not meta.get(k)]
    if missing:
        v.fail(f"README.md's YAML header lacks {', '.join(missing)}")
    elif meta["library_name"] != "btembed":
        v.fail("README.md's YAML header must say library_name: btembed")
    else:
        v.ok("model card has YAML metadata")
    if not config.license or config.license == "other":
        v.fail("config.json has no licence; set 'license' (e.g. apache-2.0) and re-render the card")
    elif meta.get("license") != config.license:
        v.fail(f"README.md says license {meta.get('license')!r} but config.json says {config.license!r}")
    else:
        v.ok(f"licence {config.license}")
    reported = (config.source or {}).get("reported_metrics")
    if not (config.metrics or reported):
        v.fail("the model has no metrics: measure them (e.g. btembed probe), store them in config.json "
               "'metrics' and re-render the card")
    elif "## Metrics" not in body or "| metric |" not in body:
        v.fail("README.md has no metrics table; re-render the card from config.json")
    elif missing := [k for k in {**(reported or {}), **config.metrics} if k not in body]:
        v.fail(f"README.md does not show {', '.join(missing)} from config.json; re-render the card (or add them)")
    else:
        v.ok("model card lists metrics" + ("" if config.metrics else " (reported by the original authors)"))


def _check_loads(v: Validation) -> None:
    """The folder loads with Embedder and gives finite unit vectors of the configured width."""
    import numpy as np

    from btembed.embedder import Embedder

    try:
        embedder = Embedder.from_pretrained(v.folder, backend="torch")
        size = embedder.config.preprocess.input_size
        pixels = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        vectors = embedder.embed(pixels, num_workers=0, progress=False)
    except BtembedError as e:
        v.fail(f"does not load with Embedder: {e}")
        return
    norms = np.linalg.norm(vectors, axis=1)
    if vectors.shape != (2, embedder.dim) or not np.all(np.isfinite(vectors)) or not np.allclose(norms, 1, atol=1e-4):
        v.fail(f"Embedder gives bad vectors (shape {vectors.shape}, norms {norms})")
    else:
        v.ok(f"loads with Embedder: {embedder.dim}-d unit vectors")


def add_onnx(folder: str | Path) -> Path:
    """Export folder/model.onnx with btembed's ONNX exporter and record its sha256 in config.json."""
    from btembed.backends.onnx_export import export_onnx
    from btembed.modelfolder import ModelFolder

    folder = Path(folder)
    config = ModelConfig.load(folder)
    path = export_onnx(ModelFolder.at(folder, config), folder / ONNX_FILE)
    config.files[ONNX_FILE] = sha256_file(path)
    config.save(folder)
    return path


def onnx_parity(folder: str | Path, n_images: int = 4) -> dict:
    """Worst-row agreement of folder/model.onnx with the fp32 torch graph on fixed random pixels."""
    import numpy as np

    from btembed.backends.onnx_check import parity
    from btembed.modelfolder import ModelFolder

    folder = Path(folder)
    config = ModelConfig.load(folder)
    size = config.preprocess.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    return parity(folder / ONNX_FILE, ModelFolder.at(folder, config), pixels, config=config)


def _export_if_missing(v: Validation) -> None:
    """Export model.onnx when the folder has none."""
    if not (v.folder / ONNX_FILE).is_file():
        try:
            add_onnx(v.folder)
        except BtembedError as e:
            v.fail(f"ONNX export failed: {e}")
            return
        v.ok("exported model.onnx")


def _check_onnx(v: Validation) -> None:
    """model.onnx gives the same vectors as the torch model (relative difference within PARITY_TOLERANCE)."""
    if not (v.folder / ONNX_FILE).is_file():
        v.ok("no model.onnx (not exported: --no-onnx)")
        return
    try:
        report = onnx_parity(v.folder)
    except Exception as e:  # onnxruntime raises its own types for a damaged or mismatched file
        v.fail(f"model.onnx cannot be run for the parity check ({type(e).__name__}: {str(e)[:200]})")
        return
    if report["max_relative_diff"] > PARITY_TOLERANCE:
        v.fail(f"model.onnx disagrees with the torch weights: max relative difference "
               f"{report['max_relative_diff']:.2e} > {PARITY_TOLERANCE:g}; re-export it")
    else:
        v.ok(f"ONNX parity with torch: max relative difference {report['max_relative_diff']:.1e}")


def _check_finished(v: Validation, config: ModelConfig, allow_unfinished: bool) -> None:
    """A model from a training run that stopped part-way is published only on purpose."""
    training = config.training or {}
    if training.get("finished", True):
        return
    where = f" ({training.get('epochs_completed')} of {training.get('epochs')} epochs)" if "epochs" in training else ""
    if allow_unfinished:
        v.ok(f"an intermediate model{where}, published on purpose (--allow-unfinished)")
    else:
        v.fail(f"config.json says its training run did not finish{where}: an intermediate model; export a "
               "finished run, or pass --allow-unfinished to publish it anyway")


def validate(folder: str | Path, *, export_missing_onnx: bool = True, allow_unfinished: bool = False) -> Validation:
    """Check a model folder is fit to publish; collects every problem instead of stopping at the first."""
    v = Validation(Path(folder))
    try:
        ModelConfig.load(v.folder)
        if export_missing_onnx:
            _export_if_missing(v)
        config = ModelConfig.load(v.folder)  # re-read: an export records model.onnx's hash
    except BtembedError as e:
        v.fail(str(e))
        return v
    _check_hashes(v, config)
    if not v.problems:
        _check_loads(v)
        _check_onnx(v)
    _check_card(v, config)
    _check_finished(v, config, allow_unfinished)
    v.files = [(name, (v.folder / name).stat().st_size) for name in PUBLISH_FILES if (v.folder / name).is_file()]
    return v


def human_size(n: int) -> str:
    """Bytes in a short human form."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def upload(folder: Path, repo_id: str, files: list[str], *, revision: str | None = None, tag: str | None = None,
           private: bool = False, token: str | None = None) -> str:
    """Create the repo if needed, upload the files in one commit, tag it; returns the commit sha."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files,
                                   revision=revision, commit_message=f"Publish {folder.name} with btembed")
        if tag:
            api.create_tag(repo_id, tag=tag, revision=commit.oid)
    except (HfHubHTTPError, OSError) as e:
        raise PublishError(f"uploading {folder} to {repo_id} failed ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); check the token (hf auth login), "
                           "the network and the repo name, then retry") from None
    return commit.oid


@contextlib.contextmanager
def staged_copy(folder: Path):
    """A temporary stand-in for a model folder, so a dry run can export and record model.onnx without touching it."""
    try:
        recorded = set(ModelConfig.load(folder).files)
    except BtembedError:
        recorded = set()  # validate() reports the unreadable config
    with tempfile.TemporaryDirectory(prefix="btembed-publish-") as tmp:
        stage = Path(tmp) / folder.name
        stage.mkdir()
        for name in sorted(set(PUBLISH_FILES) | recorded):
            src = folder / name
            if not src.is_file():
                continue
            # Large files are linked, not copied; validation replaces files (temp + rename), never writes into them.
            if src.suffix in (".safetensors", ".onnx"):
                os.symlink(src.resolve(), stage / name)
            else:
                shutil.copy2(src, stage / name)
        yield stage


def _dry_run_note(folder: Path, stage: Path, name: str) -> str:
    """How a dry run's listed file differs from the folder's own (a real publish writes these changes)."""
    if not (folder / name).is_file():
        return "  (not in the folder yet: a real publish exports it there first)"
    if name == "config.json" and (stage / name).read_bytes() != (folder / name).read_bytes():
        return "  (a real publish updates it: it records model.onnx's sha256)"
    return ""


def publish(folder: str | Path, repo_id: str, *, revision: str | None = None, tag: str | None = None,
            dry_run: bool = False, name: str | None = None, export_missing_onnx: bool = True,
            private: bool = False, allow_unfinished: bool = False, out=None) -> dict | None:
    """Validate, then (unless dry_run) upload and return the registry entry {name: entry} to add."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .registry_tools import entry_from_folder

    try:  # before the slow checks and the ONNX export, not at upload time after them
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("it needs the owner too")
    except HFValidationError as e:
        raise PublishError(f"--repo {repo_id!r} is not a Hub repo id ORG/NAME ({str(e).splitlines()[0]})") from None
    folder = Path(folder)
    # the file list is a dry run's result (stdout); for a real upload stdout carries only the registry entry
    out = out or (sys.stdout if dry_run else sys.stderr)
    with contextlib.ExitStack() as stack:
        # A dry run changes nothing: whatever it needs (model.onnx, config.json recording it) is built aside.
        checked = stack.enter_context(staged_copy(folder)) if dry_run else folder
        v = validate(checked, export_missing_onnx=export_missing_onnx, allow_unfinished=allow_unfinished)
        for check in v.checks:
            print(f"  ok    {check}", file=sys.stderr)
        if v.problems:
            raise PublishError(f"{folder} is not fit to publish: "
                               + "; ".join(p.replace(str(checked), str(folder)) for p in v.problems))
        print(f"{'would upload' if dry_run else 'uploading'} to {repo_id}"
              f"{' (branch ' + revision + ')' if revision else ''}:", file=out)
        for fname, size in v.files:
            note = _dry_run_note(folder, checked, fname) if dry_run else ""
            print(f"  {fname:<20} {human_size(size):>10}{note}", file=out)
    if dry_run:
        print(f"dry run: nothing was sent and {folder} was not changed", file=out)
        return None
    sha = upload(folder, repo_id, [f for f, _ in v.files], revision=revision, tag=tag, private=private)
    return {name or repo_id: entry_from_folder(folder, repo_id, sha)}
