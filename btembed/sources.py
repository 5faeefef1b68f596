"""Where model names come from: the package default, a folder, the registry, the Hugging Face Hub, the authors' URLs.

`locate` turns any name into a local folder; `btembed.modelfolder.ModelFolder.resolve` is the entry point that
calls it once and passes the result down. registry.json (or $BTEMBED_REGISTRY) is this module's data. A registry
entry with a `source` block names the authors' own file (url, sha256 or null, size, format, license, reported
figures): it is downloaded once (resumable), verified (pinned hash, or trust on first use), converted bit for bit
into a model folder and kept in btembed's cache, $BTEMBED_CACHE/models/NAME/SHA256[:16]/.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from .config import ModelConfig
from .errors import ModelError
from .modelfiles import CONFIG_FILE, MODEL_FILES, cache_dir, embedded_dir, sha256_file, verify_file
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

# The authors' evaluation transform for all three released ResNet-50s: Resize(256) (bilinear), CenterCrop(224),
# ImageNet mean/std.
AUTHORS_PREPROCESS = PreprocessConfig(input_size=224, resize_size=256, interpolation="bilinear", crop="center",
                                      mean=IMAGENET_MEAN, std=IMAGENET_STD)
TRUST_FILE = "trusted.json"

REGISTRY_NAMESPACE = "btembed"  # names under btembed/ are the registry's own, never looked up on the Hub
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def registry_path() -> str | None:
    """The registry file named by $BTEMBED_REGISTRY, or None for the one shipped in the package."""
    return os.environ.get("BTEMBED_REGISTRY") or None


def load_registry() -> dict:
    """The model registry: $BTEMBED_REGISTRY when set, else btembed/registry.json shipped as package data."""
    return _read_registry(registry_path())


@lru_cache(maxsize=4)
def _read_registry(path: str | None) -> dict:
    if path is None:
        return json.loads(resources.files("btembed").joinpath("registry.json").read_text())
    try:
        return json.loads(Path(path).expanduser().read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"the registry {path} named by BTEMBED_REGISTRY cannot be read ({e}); fix or unset "
                         "BTEMBED_REGISTRY") from None


def registry_entry(name: str) -> dict | None:
    """The registry entry for a model name, or None."""
    return load_registry().get("models", {}).get(name)


def default_name() -> str:
    """The registry name of the embedded default model."""
    name = load_registry().get("default")
    if not name:
        raise ModelError("this install ships no embedded default model yet; pass --model with a model "
                         "folder (see README: 'Getting a model')")
    return name


def hf_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_download(repo_id: str, revision: str | None, unreleased: bool = False) -> Path:
    """Fetch a repo snapshot via huggingface_hub (its cache, revision pinning, HF_HUB_OFFLINE).

    unreleased: the registry knows the name but has no release yet, so only the local cache is looked at.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    offline = hf_offline()
    what = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILES),
                                      local_files_only=unreleased))
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelError(f"model {what} was not found on the Hugging Face Hub (or needs a login); "
                         "check the name, or pass a local model folder") from None
    except RevisionNotFoundError:
        raise ModelError(f"revision {revision!r} does not exist for model {repo_id}") from None
    except LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face Hub could not be reached"
        if unreleased:
            raise ModelError(f"model {what} is not in the local Hugging Face cache"
                             + (" (offline mode is on)" if offline else "") + " and has not been released on "
                             "the Hub yet (btembed models lists what is available); pass a local model folder "
                             "or pre-fill the cache (HF_HUB_CACHE)") from None
        raise ModelError(f"model {what} is not in the local Hugging Face cache and {why}; connect and "
                         "run once online, copy the model folder here and pass its path, or pre-fill the cache "
                         "(HF_HUB_CACHE)") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelError(f"model {what} could not be downloaded from the Hugging Face Hub "
                         f"({type(e).__name__}); pass a local model folder or retry later") from None


def _from_registry(name: str, entry: dict, revision: str | None) -> tuple[Path, str]:
    """(folder, origin) of a registry entry: embedded, the Hub (or its local cache), then the authors' URL."""
    if entry.get("embedded"):
        folder = embedded_dir() / entry["embedded"]
        if folder.is_dir():
            return folder, "embedded"
    try:
        folder = hub_download(entry["repo_id"], revision or entry.get("revision"),
                              unreleased=not entry.get("released"))
    except ModelError:
        if not entry.get("source"):
            raise
        return fetch(name, entry), "cache"
    pinned = (entry.get("files") or {}).get(CONFIG_FILE)
    if pinned and revision in (None, entry.get("revision")):
        # The registry pins config.json, which pins the weights: a hash chain from the installed package.
        verify_file(folder, ModelConfig(), CONFIG_FILE, expected=pinned)
    return folder, "hub"


def locate(name_or_path=None, *, revision: str | None = None) -> tuple[Path, str, str]:
    """Any name → (local folder, the name it was asked by, origin: folder | embedded | hub | cache).

    None means the embedded default; then a folder, a registry name, or an org/name Hugging Face repo.
    """
    text = default_name() if name_or_path is None else os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path, text, "folder"
    entry = registry_entry(text)
    if entry is not None:
        folder, origin = _from_registry(text, entry, revision)
        return folder, text, origin
    if path.exists():
        raise ModelError(f"{text} is a file, not a model folder (a folder with config.json and model.safetensors)")
    _refuse_unknown_registry_name(text)
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if _REPO_ID.match(text) and not looks_like_path:
        return hub_download(text, revision), text, "hub"
    raise ModelError(f"model {text!r} is neither a folder here, a registry name, nor a Hugging Face repo id "
                     "(org/name)")


def _refuse_unknown_registry_name(text: str) -> None:
    """A btembed/NAME the registry lacks is a typo, not a Hub repo: say so before any network attempt."""
    import difflib

    if not text.startswith(f"{REGISTRY_NAMESPACE}/"):
        return
    known = {name.split("/", 1)[-1]: name for name in load_registry().get("models", {})}
    # Compared without the shared prefix, which would make every name look close.
    close = difflib.get_close_matches(text.split("/", 1)[1], list(known), n=1, cutoff=0.5)
    hint = f"did you mean {known[close[0]]}?" if close else "btembed models lists the registry names"
    raise ModelError(f"{text} is not a registry name; {hint}")


# ---- the authors' files: btembed's cache, trust on first use, download, conversion ----

def model_cache(name: str) -> Path:
    """Where btembed keeps what it fetched for a registry name: converted folders, the trust record, a .part."""
    return cache_dir() / "models" / name.replace("/", "--")


def trusted_sha256(name: str) -> str | None:
    """The sha256 recorded on first use of an unpinned source, or None (clearing the cache forgets it)."""
    try:
        return json.loads((model_cache(name) / TRUST_FILE).read_text()).get("sha256")
    except (OSError, json.JSONDecodeError):
        return None


def cached_source_folder(name: str, entry: dict) -> Path | None:
    """The converted folder of a source entry in btembed's cache, or None; reads only local files."""
    digest = (entry.get("source") or {}).get("sha256") or trusted_sha256(name)
    folder = model_cache(name) / digest[:16] if digest else None
    return folder if folder is not None and (folder / CONFIG_FILE).is_file() else None


def carry_in_hint(name: str, url: str) -> str:
    """How to bring a file to a machine that cannot download it."""
    return (f"download {url} on a connected machine, carry the file here and run "
            f"`btembed models fetch {name} --from FILE`")


def fetch(name: str, entry: dict | None = None, *, from_file: str | Path | None = None) -> Path:
    """A source entry's converted folder: from the cache, else downloaded (or from_file), verified, converted."""
    from filelock import FileLock

    entry = entry or registry_entry(name)
    if not (entry or {}).get("source"):
        raise ModelError(f"{name} has no download source in the registry (btembed models lists what has one)")
    home = model_cache(name)
    lock = cache_dir() / "locks" / f"{home.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    # Two processes asking for the same name at once: the second waits and then finds the folder made.
    with FileLock(str(lock)):
        try:
            return _fetch_locked(name, entry, home, from_file)
        except BaseException:
            if home.is_dir() and not any(home.iterdir()):
                home.rmdir()  # a refusal leaves nothing behind (a resumable .part is something)
            raise


def _fetch_locked(name: str, entry: dict, home: Path, from_file: str | Path | None) -> Path:
    """fetch() once the name's lock is held."""
    source = entry["source"]
    if from_file is None:
        found = cached_source_folder(name, entry)
        if found is not None:
            return found
        file, what = _download_source(name, source, home), f"the file downloaded from {source['url']}"
    else:
        file = Path(from_file).expanduser()
        if file.is_dir():
            raise ModelError(f"{file} is a folder, not a file; give the downloaded {name} file itself")
        if not file.is_file():
            what = "is not a regular file" if os.path.lexists(file) else "does not exist"
            raise ModelError(f"{file} {what}; give the downloaded {name} file")
        what = str(file)
    try:
        digest = _check_file(name, source, file, what)
        folder = home / digest[:16]
        if not (folder / CONFIG_FILE).is_file():
            _convert_into(name, entry, file, digest, folder)
            _first_use(name, source, digest, from_file is not None)
    finally:
        if from_file is None:
            file.unlink(missing_ok=True)  # the converted folder holds every weight bit for bit
    return folder


def _download_source(name: str, source: dict, home: Path) -> Path:
    """The authors' file downloaded (or resumed) into home as a .part; the error says how to carry it in."""
    from .download import download, mirrored

    url = source["url"]
    if hf_offline():
        raise ModelError(f"model {name} is not in btembed's cache and offline mode is on (HF_HUB_OFFLINE=1); "
                         + carry_in_hint(name, url))
    part = home / (Path(urlsplit(url).path).name + ".part")
    try:
        return download(mirrored(url), part, size=source.get("size"), label=name)
    except ModelError as e:
        raise type(e)(f"{e}; or {carry_in_hint(name, url)}") from None


def _check_file(name: str, source: dict, file: Path, what: str) -> str:
    """The file's sha256 once its size and hash are what the registry pins (or what was trusted on first use)."""
    size = source.get("size")
    if size is not None and file.stat().st_size != size:
        raise ModelError(f"{what} has {file.stat().st_size:,} bytes, but the registry pins {size:,} for {name}: it "
                         "is not the authors' file; refused, nothing was kept")
    digest = sha256_file(file)
    pinned, trusted = source.get("sha256"), trusted_sha256(name)
    if pinned and digest != pinned:
        raise ModelError(f"{what} has sha256 {digest}, but the registry pins {pinned} for {name}: it is not the "
                         "authors' file; refused, nothing was kept")
    if not pinned and trusted and digest != trusted:
        raise ModelError(f"{what} has sha256 {digest}, but {trusted} was trusted on first use for {name} "
                         f"({model_cache(name) / TRUST_FILE}); refused. If the authors replaced the file, delete "
                         f"{model_cache(name)} to trust the new one")
    return digest


def _convert_into(name: str, entry: dict, file: Path, digest: str, folder: Path) -> None:
    """Convert the checked file into folder, atomically: a crash or a refusal leaves no folder behind."""
    from .card import render_card
    from .convert import read_trunk, write_trunk

    source = entry["source"]
    state, facts, arch = read_trunk(file, source.get("format", "auto"))
    if entry.get("architecture") and arch != entry["architecture"]:
        raise ModelError(f"{file} holds a {arch} trunk, but {name} is a {entry['architecture']}; it is not the "
                         "authors' file")
    config = source_config(name, entry, digest, arch, facts)
    tmp = folder.with_name(f".tmp-{os.getpid()}-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_trunk(state, config, tmp)
        (tmp / "README.md").write_text(render_card(config))
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def source_config(name: str, entry: dict, digest: str, arch: str, facts: dict) -> ModelConfig:
    """config.json of a converted authors' file: their preprocessing, licence, provenance and reported figures."""
    source = entry["source"]
    provenance = {
        "kind": "authors-release", "origin": f"the authors' file {source['url']}", "url": source["url"],
        "sha256": digest, "sha256_pinned": bool(source.get("sha256")), "size": source.get("size"),
        "format": facts["format"], "license": source.get("license", ""), "license_url": source.get("license_url", ""),
        "reference": source.get("paper", ""), "repo_id": name, "description": entry.get("description", ""),
        "reported_metrics": source.get("reported") or {},
        "reported_for": f"the file at {source['url']}",
    }
    provenance.update({k: source[k] for k in ("license_note", "note") if source.get(k)})
    provenance.update({k: facts[k] for k in ("dropped", "epoch") if k in facts})
    limits = [f"Licensed {source['license']} by the original authors: {source['license_note']}."] \
        if source.get("license_note") else []
    training = {"trained_by": "the original authors (see Paper); converted bit for bit by btembed",
                "data": "ImageNet-1k train (labels unused)", "datasets": ["imagenet-1k"],
                "limits": limits + ["Trained on ImageNet-1k only: object-centric photos; other domains (documents, "
                                    "medical, satellite, drawings) may embed poorly."]}
    # A threshold calibrated for this entry (python -m hub calibrate-dedup --record) comes with what it measured.
    measured = {k: v for k, v in (entry.get("metrics") or {}).items() if k.startswith("dedup_pair_")}
    return ModelConfig(architecture=arch, name=name, license=source.get("license", ""),
                       preprocess=AUTHORS_PREPROCESS, source=provenance, training=training,
                       duplicate_threshold=entry.get("duplicate_threshold"), metrics=measured)


def _first_use(name: str, source: dict, digest: str, carried: bool) -> None:
    """Record an unpinned hash (trust on first use) and name the licence, once, on stderr."""
    home = model_cache(name)
    if not source.get("sha256") and trusted_sha256(name) is None:
        record = {"sha256": digest, "url": source["url"], "carried_in": carried,
                  "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = home / f".{TRUST_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, home / TRUST_FILE)
        print(f"btembed: {name}: the registry pins no sha256, so {digest} is trusted on first use and recorded in "
              f"{home / TRUST_FILE} (a later file that differs is refused; clearing the cache forgets it)",
              file=sys.stderr)
    licence = source.get("license") or "not stated"
    note = f" ({source['license_note']})" if source.get("license_note") else ""
    print(f"btembed: {name}: the authors' weights are licensed {licence}{note}; see "
          f"{source.get('license_url') or source['url']}", file=sys.stderr)
