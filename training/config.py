"""TrainConfig: every knob of a training run as data; recipes are YAML files in training/recipes/."""
from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from btembed.errors import BtembedError
from btembed.preprocess import INTERPOLATIONS

from . import objectives

RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(BtembedError):
    """A recipe or override that cannot be used."""


# Top-level keys of earlier configs that are objective settings now: old key → the objective it belonged to.
FLAT_OBJECTIVE_KEYS = {"lambd": "barlow_twins"}
_said: set[str] = set()


@dataclass
class TrainConfig:
    """A training run; defaults are the Barlow Twins paper's ImageNet settings (imagenet-r50)."""

    recipe: str = "custom"
    description: str = ""
    # Model: a btembed.Encoder trunk plus the projector (Linear no bias, BN+ReLU on all but the last).
    architecture: str = "resnet50"
    zero_init_residual: bool = True
    projector: list = field(default_factory=lambda: [8192, 8192, 8192])
    sync_bn: bool = True  # the model's BatchNorms see the global batch under DDP, as the official code does
    # The objective and its settings (training/objectives/NAME.py; unset settings take the authors' defaults).
    objective: dict = field(default_factory=lambda: {"name": objectives.DEFAULT})
    # Optimization: LARS, lr = lr_* x batch_size / 256, warm-up then cosine to final_lr_ratio x.
    batch_size: int = 2048  # global, over all processes
    epochs: int = 1000
    lr_weights: float = 0.2
    lr_biases: float = 0.0048  # biases and BN parameters: no weight decay, no LARS adaptation
    weight_decay: float = 1.5e-6
    momentum: float = 0.9
    lars_eta: float = 0.001
    warmup_epochs: float = 10.0
    final_lr_ratio: float = 0.001
    # Augmentation: both views share crop/flip/jitter/grayscale; blur and solarize differ per view (A, B).
    image_size: int = 224
    crop_scale: tuple = (0.08, 1.0)
    interpolation: str = "bicubic"
    flip_p: float = 0.5
    jitter: tuple = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple = (1.0, 0.1)
    blur_sigma: tuple = (0.1, 2.0)  # pixels, at image_size
    solarize_p: tuple = (0.0, 0.2)
    # Multi-crop (Caron et al., 2020; not in the Barlow Twins paper, which uses two views): local_crops extra small
    # views per image, each paired with both large views in the loss. 0 keeps the paper's two-view method.
    local_crops: int = 0
    local_size: int = 48
    local_scale: tuple = (0.05, 0.2)
    local_blur_p: float = 0.5
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    # Data loading.
    decode_size: int = 0  # JPEG draft decoding down to this short side (0: full decode)
    repeats: int = 1  # each image appears this many times per epoch, each time with fresh crops
    decode_cache: bool = False  # decode every image once into RAM before training (same pixels, less work per step)
    num_workers: int = 8  # per process
    # Speed.
    amp: str = "auto"  # auto | bf16 | fp16 | none (auto: bf16 where supported, else fp16 on GPU, else none)
    channels_last: bool = True
    compile: bool = False
    # Bookkeeping.
    seed: int = 0
    log_every: int = 50  # steps between health lines
    checkpoint_every: int = 1000  # steps between checkpoints (0: only at epoch ends)
    max_steps: int = 0  # stop after this many optimizer steps in total (0: the whole schedule)
    # A wall-clock budget in minutes (0: none). The first warm-up steps are timed and the lr schedule is fitted to
    # what the rest of the budget allows at that speed (never longer than `epochs`); the result is schedule_steps.
    time_budget: float = 0.0
    # Start from other weights: a run folder gives trunk and projector, a model folder / registry name / hub repo
    # the trunk only (fresh projector); the optimizer, lr schedule and RNG start fresh. Empty: random init (paper).
    init_from: str = ""
    schedule_steps: int = 0  # length of the lr schedule in steps (0: epochs x steps per epoch)
    # Health: RankMe over the last rankme_samples trunk features; alarm when std or rank fall below these.
    rankme_samples: int = 512
    alarm_std: float = 0.05  # mean per-dim std of L2-normalized trunk features x sqrt(D)
    alarm_rank: float = 0.02  # RankMe / min(samples, D)
    # Optional online kNN monitor on a labeled folder (class subfolders).
    monitor_data: str = ""
    monitor_every: int = 1  # epochs
    monitor_k: int = 20
    # What the exported model folder's preprocessing says (0: image_size and image_size x 256/224).
    export_input_size: int = 0
    export_resize_size: int = 0
    # Training crops are resized bicubic, yet bilinear inference embeds better: the default model at 144 px,
    # 3 probe seeds, sum of its six dev-set leads over random init 72.2 bilinear vs 69.9 bicubic (session 10).
    export_interpolation: str = "bilinear"

    def __post_init__(self):
        for f in fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
        self.objective = objective_settings(self.objective)
        if self.local_crops and not objectives.find(self.objective["name"]).pairs_local_crops:
            able = [n for n in objectives.MEMBERS if objectives.find(n).pairs_local_crops]
            raise ConfigError(f"local_crops works with the objectives {', '.join(able)}, not "
                              f"{self.objective['name']}; drop local_crops or pick one of those")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ConfigError(f"amp must be auto, bf16, fp16 or none, not {self.amp!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"interpolation must be bilinear or bicubic, not {self.interpolation!r}")
        if self.export_interpolation not in INTERPOLATIONS:
            raise ConfigError(f"export_interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                              f"not {self.export_interpolation!r}")
        if len(self.projector) < 1 or any(d < 1 for d in self.projector):
            raise ConfigError(f"projector must list one or more layer widths, got {self.projector!r}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 (the loss standardizes along the batch)")
        if self.repeats < 1 or self.epochs < 1:
            raise ConfigError("epochs and repeats must be at least 1")
        if self.time_budget < 0 or self.schedule_steps < 0:
            raise ConfigError(f"time_budget and schedule_steps must be 0 (off) or more, got {self.time_budget} and "
                              f"{self.schedule_steps}")
        if self.local_crops < 0 or (self.local_crops and self.local_size < 8):
            raise ConfigError(f"local_crops must be 0 or more and local_size at least 8, got {self.local_crops} "
                              f"and {self.local_size}")
        for names, n in ((("blur_p", "solarize_p", "crop_scale", "blur_sigma", "local_scale"), 2),
                         (("mean", "std"), 3)):
            for name in names:
                if len(getattr(self, name)) != n:
                    raise ConfigError(f"config key {name} needs {n} values, got {list(getattr(self, name))}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Values that would otherwise fail deep inside a step (or train nonsense) are refused up front."""
        at_least = {"log_every": 1, "monitor_every": 1, "monitor_k": 1, "image_size": 8, "rankme_samples": 2,
                    "num_workers": 0, "max_steps": 0, "checkpoint_every": 0, "decode_size": 0,
                    "export_input_size": 0, "export_resize_size": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}, not {getattr(self, name)}")
        for name in ("lr_weights", "lr_biases", "weight_decay", "momentum", "lars_eta", "warmup_epochs",
                     "final_lr_ratio"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        for name in ("crop_scale", "local_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ConfigError(f"{name} is (smallest, largest) crop area as fractions of the image, "
                                  f"0 < smallest <= largest <= 1; got {list(getattr(self, name))}")

    @property
    def embedding_dim(self) -> int:
        """Width of the projector output (the loss's D)."""
        return self.projector[-1]

    def to_dict(self) -> dict:
        """Plain JSON/YAML-ready mapping (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a mapping; unknown keys are an error naming the nearest valid one."""
        d = _nest_flat_objective_keys(d)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            guesses = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, names, 1)) else k
                       for k in unknown]
            raise ConfigError(f"unknown config key(s) {', '.join(guesses)}; the keys are TrainConfig's fields "
                              "in training/config.py")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def objective_settings(value) -> dict:
    """{name, every setting} of an objective given as a name or a mapping, checked and typed like other keys."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"config key objective must be a name or a mapping {{name: NAME, setting: value}}, got "
                          f"{value!r}")
    settings = dict(value)
    name = settings.pop("name", objectives.DEFAULT)
    try:
        cls = objectives.find(name)
        typed = {f.name: f for f in dataclasses.fields(cls.Settings)}
        settings = {k: _coerce(typed[k], v, f"objective.{k}") if k in typed else v for k, v in settings.items()}
        return {"name": name, **dataclasses.asdict(cls.make_settings(**settings))}
    except objectives.ObjectiveError as e:
        raise ConfigError(str(e)) from None


def _nest_flat_objective_keys(d: dict) -> dict:
    """Earlier configs' top-level objective settings (lambd=...) moved into objective, saying the new spelling."""
    flat = [k for k in FLAT_OBJECTIVE_KEYS if k in d]
    if not flat:
        return d
    d = dict(d)
    objective = d.get("objective", {"name": objectives.DEFAULT})
    objective = dict({"name": objective} if isinstance(objective, str) else objective)
    name = objective.get("name", objectives.DEFAULT)
    for key in flat:
        if FLAT_OBJECTIVE_KEYS[key] != name:
            raise ConfigError(f"config key {key} is a setting of the {FLAT_OBJECTIVE_KEYS[key]} objective, and this "
                              f"run's objective is {name}; drop it")
        objective[key] = d.pop(key)
        note = f"note: config key {key} is now spelled objective.{key} (objective: {{name: {name}, {key}: ...}})"
        if note not in _said and os.environ.get("RANK", "0") == "0":  # once, and not once per torchrun process
            _said.add(note)
            print(note, file=sys.stderr)
    d["objective"] = objective
    return d


def _field_type(f) -> str:
    """The annotation of a dataclass field as a plain name ('int', 'tuple', ...)."""
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _coerce(f, value, name: str = ""):
    """Convert YAML/CLI values to the field's type, with a clear error (naming the key `name`, else f.name)."""
    name, kind = name or f.name, _field_type(f)
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "on", "1"):
                    return True
                if value.lower() in ("false", "no", "off", "0"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            return _integer(value)
        if kind == "float":
            return _number(value)
        if kind == "str":
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        article = "an" if kind == "int" else "a"
        raise ConfigError(f"config key {name} must be {article} {kind}, got {value!r}") from None
    if kind in ("tuple", "list"):
        # tuple fields hold numbers (crop_scale, mean, ...), the list field holds layer widths (projector).
        item, convert = ("number", _number) if kind == "tuple" else ("integer", _integer)
        try:
            items = [convert(v) for v in _items(value)]
        except (TypeError, ValueError):
            example = f.default_factory() if f.default is MISSING else f.default
            shown = ", ".join(map(str, example))
            raise ConfigError(f"config key {name} must be a list of {item}s, e.g. [{shown}] or "
                              f"{shown.replace(' ', '')}; got {value!r}") from None
        return tuple(items) if kind == "tuple" else items
    return value


def _integer(value) -> int:
    """An int from an int, a whole float or a decimal string; never from a bool (epochs=true is a mistake)."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _number(value) -> float:
    """A float from a number or a numeric string, never from a bool."""
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _items(value) -> list:
    """The items of a list value: a YAML list, "a,b" or "[a, b]"/"(a, b)" text from a command line, or one value."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] + text[-1:] in ("[]", "()"):
            text = text[1:-1].strip()
        return [part.strip() for part in text.split(",")] if text else []
    if isinstance(value, (int, float)):
        return [value]
    raise TypeError(value)


def recipe_names() -> list[str]:
    """Names of the bundled recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> TrainConfig:
    """A bundled recipe by name, or a YAML file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no recipe {name_or_path!r}: not a YAML file, and not one of {', '.join(recipe_names())}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if data is None:  # an empty file would silently mean the ImageNet ResNet-50 defaults
        raise ConfigError(f"{path} is empty; a recipe lists its config keys (see training/recipes/cpu-tiny.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of config keys")
    data.setdefault("recipe", path.stem)
    return TrainConfig.from_dict(data)


def apply_overrides(config: TrainConfig, overrides: typing.Sequence[str]) -> TrainConfig:
    """key=value strings (values parsed as YAML: 0.1, true, [1, 2]) applied on top of a config.

    objective=NAME picks another objective at its defaults (the same name keeps its settings);
    objective.KEY=VALUE sets one of its settings, whatever the order on the command line.
    """
    changes, settings = {}, {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if key.startswith("objective."):
            settings[key[len("objective."):]] = value
        else:
            changes[key] = value
    if "objective" in changes or settings:
        objective = changes.get("objective", config.objective["name"])
        if isinstance(objective, str) and objective == config.objective["name"]:
            objective = config.objective
        objective = {"name": objective} if isinstance(objective, str) else objective
        if not isinstance(objective, dict):
            raise ConfigError(f"objective must be a name or a mapping {{name: NAME, setting: value}}, "
                              f"got {objective!r}")
        changes["objective"] = {**objective, **settings}
    return config.replace(**changes) if changes else config
