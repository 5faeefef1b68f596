"""A training run → a btembed model folder (trunk only) with provenance in config.json and a model card."""
from __future__ import annotations

import json
from pathlib import Path

from btembed import Encoder
from btembed.config import ModelConfig
from btembed.modelfiles import CURVES_FILE, write_folder
from btembed.plotting import INSTALL_HINT, PlotError, plotting_available
from btembed.preprocess import PreprocessConfig

from .checkpoint import CHECKPOINT, describe_init, load_checkpoint
from .config import ConfigError, TrainConfig
from .objectives import get as get_objective

TRUNK_PREFIX = "trunk.trunk."  # TwinNetwork.trunk (Encoder) → Encoder.trunk (torchvision ResNet)


def trunk_state(model_state: dict) -> dict:
    """The torchvision-keyed trunk weights out of a TwinNetwork state dict (projector and heads are dropped)."""
    state = {k[len(TRUNK_PREFIX):]: v for k, v in model_state.items() if k.startswith(TRUNK_PREFIX)}
    if not state:
        raise ConfigError("the checkpoint holds no trunk weights (keys 'trunk.trunk.*')")
    return state


def training_record(ck: dict, config: TrainConfig) -> dict:
    """What config.json's 'training' says: recipe, data, schedule reached, hardware, time, the full config."""
    data = ck["data"]
    objective = get_objective(**config.objective)
    return {
        "method": objective.title,
        "objective": {"name": objective.name, "settings": objective.settings_dict(), "in_words": objective.describe()},
        "recipe": config.recipe,
        "data": f"{data['images']} images under {data['path']} ({data['bad_files']} unreadable skipped), "
                f"each seen {config.repeats}x per epoch",
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "optimizer": f"LARS (eta {config.lars_eta}, lr {config.lr_weights}/{config.lr_biases} x batch/256, "
                     f"weight decay {config.weight_decay}), {config.warmup_epochs} warm-up epochs, cosine",
        "hardware": f"{ck['world_size']} x {ck.get('device', 'cpu')}",
        "time": f"{ck['elapsed_s'] / 3600:.2f} h",
        "epochs_completed": round(ck["step"] / ck["steps_per_epoch"], 3),
        "steps": ck["step"],
        "finished": ck["finished"],
        "init": ck.get("init") or "random",
        "data_details": data,
        # The recipe's prose description estimates a typical run; this run's own figures are the fields above.
        "config": {k: v for k, v in config.to_dict().items() if k != "description"},
    }


def measured_metrics(ck: dict, config: TrainConfig) -> dict:
    """The run's last health numbers in the card's {value, protocol, dataset} form."""
    m = ck.get("metrics") or {}
    out = {}
    if "loss" in m:
        out["train_loss"] = {"value": round(m["loss"], 4),
                             "protocol": f"{get_objective(**config.objective).title} loss, mean over the last "
                                         "logging interval"}
    if "rankme" in m:
        out["train_rankme"] = {"value": round(m["rankme"], 2),
                               "protocol": f"RankMe of trunk features of the last {m.get('rankme_max')} "
                                           "training crops (max = that count)"}
    if "feat_std" in m:
        out["train_feature_std"] = {"value": round(m["feat_std"], 4),
                                    "protocol": "mean per-dim std of L2-normalized trunk features x sqrt(D)"}
    if "knn_top1" in m:
        out["knn_top1"] = {"value": round(m["knn_top1"], 4), "dataset": config.monitor_data,
                           "protocol": f"online weighted kNN (k={config.monitor_k}, T=0.07), every 5th image "
                                       "per class held out"}
    return out


def describe_training(record: dict) -> str:
    """A plain-words paragraph on how the model was trained."""
    c = record["config"]
    return (f"An image encoder trained with btembed's `training` package, recipe `{record['recipe']}`, objective "
            f"{record['objective']['in_words']}: torchvision {c['architecture']} trunk with a "
            f"{'-'.join(map(str, c['projector']))} projector (dropped at export, with any predictor), global batch "
            f"{c['batch_size']}, {c['image_size']} px crops, "
            f"{record['epochs_completed']} of {record['epochs']} epochs ({record['steps']} steps) on "
            f"{record['data']}."
            + (f" The lr schedule was fitted to a {c['time_budget']:g}-minute budget: {c['schedule_steps']} steps."
               if c.get("time_budget") and c.get("schedule_steps") else "")
            + (f" Training started from {describe_init(init)}, not from random init."
               if isinstance(init := record.get("init"), dict) else "")
            + ("" if record["finished"] else " The schedule was NOT completed: this is an intermediate model."))


def export_curves(run_dir: str | Path, folder: Path, say) -> tuple[str, ...]:
    """Draw the run's curves into the model folder for its card: (CURVES_FILE,), or () when skipped (said why)."""
    target = folder / CURVES_FILE
    target.unlink(missing_ok=True)  # one left by an earlier export may show another run
    if not plotting_available():
        say(f"training curves skipped: matplotlib is not installed ({INSTALL_HINT})")
        return ()
    from .plot import plot_run

    try:
        plot_run(run_dir, target)
    except (ConfigError, PlotError) as e:
        say(f"training curves skipped: {e}")
        return ()
    return (CURVES_FILE,)


def export_run(run_dir: str | Path, out: str | Path, name: str = "", license: str = "", input_size: int = 0,
               resize_size: int = 0, interpolation: str = "", say=lambda message: None,
               calibrate_dedup: bool = False, dedup_photos: str | Path | None = None) -> Path:
    """Write the run's trunk as a model folder that btembed.Embedder.from_pretrained loads, with its curves.

    input_size/resize_size/interpolation override the recipe's export_* preprocessing (a CNN trained on
    random-resized crops often embeds best somewhat above its training resolution; measure it on a dev set).
    say(message) hears what was left out (the curves, when matplotlib is missing).
    calibrate_dedup records the model's duplicate threshold, calibrated on the run's training images (or on
    dedup_photos): training/dedup_threshold.py.
    """
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the model (config.json, model.safetensors)")
    ck = load_checkpoint(run_dir)
    if ck is None:
        raise ConfigError(f"{run_dir} has no {CHECKPOINT}; pass the --out folder of a training run")
    config = TrainConfig.from_dict(ck["config"])
    recipe_size = config.export_input_size or config.image_size
    input_size = input_size or recipe_size
    # The recipe's resize belongs to the recipe's crop size; another crop size keeps the usual 256/224 ratio.
    recipe_resize = config.export_resize_size if input_size == recipe_size else 0
    resize = resize_size or recipe_resize or round(input_size * 256 / 224)
    if resize < input_size:
        raise ConfigError(f"resize size {resize} is smaller than the input size {input_size}")
    record = training_record(ck, config)
    model_config = ModelConfig(
        architecture=config.architecture,
        preprocess=PreprocessConfig(input_size=input_size, resize_size=resize,
                                    interpolation=interpolation or config.export_interpolation,
                                    mean=config.mean, std=config.std),
        name=name or Path(out).name, license=license,
        source={"kind": "btembed-training", "origin": "trained with btembed's training package",
                "run": str(Path(run_dir).resolve()), "description": describe_training(record)},
        training=record,
        metrics=measured_metrics(ck, config),
    )
    encoder = Encoder(model_config)
    encoder.trunk.load_state_dict(trunk_state(ck["model"]))
    Path(out).mkdir(parents=True, exist_ok=True)
    curves = export_curves(run_dir, Path(out), say)
    folder = write_folder(encoder.state_dict_for_save(), encoder.config, out, extra_files=curves)
    if calibrate_dedup:
        from .dedup_threshold import calibrate_export

        calibrate_export(folder, ck["data"], config.seed, dedup_photos, say)
    return folder


def describe(folder: str | Path) -> str:
    """A one-line summary of an exported model folder."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    t = cfg.get("training", {})
    unfinished = "" if t.get("finished", True) else " (the schedule was NOT completed: an intermediate model)"
    return (f"{folder}: {cfg['architecture']} {cfg['embedding_dim']}-d, recipe {t.get('recipe')}, {t.get('steps')} "
            f"steps{unfinished}")
