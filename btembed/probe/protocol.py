"""Linear probe and kNN on frozen features: numpy feature matrix in, ProbeResult out.

Protocol: the linear probe is multinomial logistic regression on standardized features, fit full-batch with
L-BFGS in torch, its weight decay chosen on an inner stratified validation split of the training data. kNN is
cosine: weighted k=20 with weights exp(sim / 0.07) (the InstDisc/DINO protocol) and a plain majority vote k=5.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import numpy as np

# torch is imported inside the fitting functions: `btembed predict` needs only LinearClassifier (numpy) and, with
# the onnx backend, must start without loading torch.
# Loss = mean cross-entropy + weight_decay / 2 * ||W||^2 (bias free); sklearn's C = 1 / (weight_decay * n_train).
WEIGHT_DECAY_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class ProbeConfig:
    """Every knob of the protocol, recorded with the results so a number can be reproduced."""

    folds: int = 5
    seed: int = 0
    weight_decay_grid: tuple = WEIGHT_DECAY_GRID
    inner_val_fraction: float = 0.2
    max_iter: int = 500
    knn_k: int = 20
    knn_temperature: float = 0.07
    majority_k: int = 5
    device: str = "cpu"

    def to_dict(self) -> dict:
        """A JSON-ready mapping (without the device, which does not change results)."""
        d = asdict(self)
        d["weight_decay_grid"] = list(self.weight_decay_grid)
        d.pop("device")
        return d


@dataclass
class Metrics:
    """Accuracies as fractions in [0, 1]; per-class is None for a class with no test images."""

    top1: float
    top5: float
    top5_k: int  # top-5 becomes top-min(5, classes)
    balanced_accuracy: float
    per_class: dict
    confusion: list  # confusion[true][predicted], counts
    n: int


@dataclass
class ProbeResult:
    """Linear, weighted-kNN and majority-kNN results over the same splits."""

    classes: list
    n: int
    layout: str  # "folds" or "train/val"
    config: ProbeConfig
    linear: Metrics
    knn: Metrics
    majority: Metrics
    weight_decays: list = field(default_factory=list)  # chosen per fold (one value for train/val)
    folds_top1: list = field(default_factory=list)  # linear top-1 per fold

    def to_dict(self) -> dict:
        """The stable JSON document of `btembed probe --json` (minus dataset and feature details)."""
        cfg = self.config
        linear = asdict(self.linear)
        linear.update(weight_decay=self.weight_decays, folds_top1=self.folds_top1)
        knn = asdict(self.knn)
        knn.update(k=cfg.knn_k, temperature=cfg.knn_temperature,
                   majority5_top1=self.majority.top1, majority5_balanced_accuracy=self.majority.balanced_accuracy,
                   majority_k=cfg.majority_k)
        return {"classes": list(self.classes), "n": self.n, "layout": self.layout, "protocol": cfg.to_dict(),
                "linear": linear, "knn": knn}


# ---------------------------------------------------------------------------------------------------- splits

def stratified_folds(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold id per sample: each class shuffled, then dealt round-robin so folds are balanced overall."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    counter = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        # Continuing the counter across classes keeps small classes from all landing in fold 0.
        fold_of[members] = (counter + np.arange(len(members))) % folds
        counter += len(members)
    return fold_of


def stratified_holdout(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices; every class with 2+ samples gives at least one to val and keeps one for train."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_val = 0 if len(members) < 2 else min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


# ---------------------------------------------------------------------------------------------------- linear

# Below this many feature values a fit is dominated by L-BFGS's many tiny vector ops, where each parallel
# region costs more than it saves (measured: ~10x slower on 2 busy cores); bigger problems keep every thread.
SINGLE_THREAD_BELOW = 1 << 22


@contextlib.contextmanager
def _threads_for(numel: int, device: str):
    """Run small CPU fits on one thread, restoring torch's thread count afterwards."""
    import torch

    before = torch.get_num_threads()
    small = numel < SINGLE_THREAD_BELOW and not str(device).startswith("cuda")
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, weight_decay: float, max_iter: int = 500,
                 init: tuple | None = None, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by full-batch L-BFGS → (weight [C, D], bias [C]) as float32 numpy."""
    import torch

    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long, device=device)
    if init is None:
        w = torch.zeros(n_classes, xt.shape[1], device=device)
        b = torch.zeros(n_classes, device=device)
    else:
        w, b = (torch.as_tensor(a, dtype=torch.float32, device=device).clone() for a in init)
    w.requires_grad_(True)
    b.requires_grad_(True)
    # sklearn (lbfgs) stops at a max gradient of 1e-4 on the same mean loss; 1e-5 is a little stricter.
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-5, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.addmm(b, xt, w.T), yt) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with _threads_for(xt.numel(), device):
        opt.step(closure)
    return w.detach().cpu().numpy(), b.detach().cpu().numpy()


def fit_standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of training features; constant features get std 1 so they stay finite."""
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class LinearClassifier:
    """A standardize → linear head: logits = ((x - mean) / std) @ weight.T + bias."""

    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    weight_decay: float = 0.0

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores [N, C]."""
        return ((np.asarray(x, np.float32) - self.mean) / self.std) @ self.weight.T + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the logits [N, C]."""
        z = self.logits(x)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, n_classes: int, config: ProbeConfig | None = None,
            weight_decay: float | None = None) -> "LinearClassifier":
        """Standardize on x, pick the weight decay on an inner split (unless given), refit on all of x."""
        config = config or ProbeConfig()
        mean, std = fit_standardizer(x)
        z = (np.asarray(x, np.float32) - mean) / std
        if weight_decay is None:
            weight_decay = select_weight_decay(z, y, n_classes, config)
        w, b = fit_logistic(z, y, n_classes, weight_decay, config.max_iter, device=config.device)
        return cls(w, b, mean, std, float(weight_decay))


def select_weight_decay(z: np.ndarray, y: np.ndarray, n_classes: int, config: ProbeConfig) -> float:
    """The grid value with the best inner-validation top-1 (ties: lowest validation loss)."""
    import torch

    grid = sorted(config.weight_decay_grid, reverse=True)
    if len(grid) == 1:
        return float(grid[0])
    train, val = stratified_holdout(y, config.inner_val_fraction, config.seed)
    if len(val) == 0:
        return float(grid[len(grid) // 2])
    best, best_key, init = grid[0], None, None
    yv = torch.as_tensor(y[val])
    for wd in grid:  # strong to weak, warm-started: each fit starts near its solution
        init = fit_logistic(z[train], y[train], n_classes, wd, config.max_iter, init=init, device=config.device)
        logits = torch.as_tensor(z[val] @ init[0].T + init[1])
        acc = float((logits.argmax(1) == yv).float().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, yv))
        key = (-acc, loss)
        if best_key is None or key < best_key:
            best, best_key = wd, key
    return float(best)


# ---------------------------------------------------------------------------------------------------- kNN

def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int, k: int = 20,
               temperature: float = 0.07, weighted: bool = True, chunk: int = 1024) -> np.ndarray:
    """Class scores [N_test, C] from the k nearest training vectors by cosine similarity.

    weighted: sum of exp(sim / temperature) per class. Otherwise one vote per neighbour, ties broken toward
    the class whose neighbours rank nearer (the rank bonus totals under one vote, so it never outvotes).
    """
    import torch

    train = torch.nn.functional.normalize(torch.as_tensor(np.asarray(train_x, np.float32)), dim=1)
    labels = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    k = min(k, len(train))
    if not weighted:
        rank_bonus = (k - torch.arange(k, dtype=torch.float32)) / (k * (k + 1))
    out = []
    for start in range(0, len(test_x), chunk):
        q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(test_x[start:start + chunk], np.float32)), dim=1)
        sims, idx = (q @ train.T).topk(k, dim=1)
        votes = torch.exp(sims / temperature) if weighted else 1.0 + rank_bonus.expand_as(sims)
        scores = torch.zeros(len(q), n_classes)
        scores.scatter_add_(1, labels[idx], votes)
        out.append(scores)
    return torch.cat(out).numpy() if out else np.zeros((0, n_classes), np.float32)


# ---------------------------------------------------------------------------------------------------- metrics

def compute_metrics(y_true: np.ndarray, scores: np.ndarray, classes: list) -> Metrics:
    """Top-1, top-5, balanced accuracy, per-class accuracy and confusion matrix from class scores."""
    y_true = np.asarray(y_true)
    n_classes = len(classes)
    k5 = min(5, n_classes)
    # A stable sort keeps ties in class order, so results do not depend on the sort algorithm.
    order = np.argsort(-scores, axis=1, kind="stable")
    pred = order[:, 0]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, pred), 1)
    support = confusion.sum(axis=1)
    per_class = {str(c): (float(confusion[i, i] / support[i]) if support[i] else None)
                 for i, c in enumerate(classes)}
    present = [v for v in per_class.values() if v is not None]
    n = len(y_true)
    return Metrics(top1=float((pred == y_true).mean()) if n else 0.0,
                   top5=float((order[:, :k5] == y_true[:, None]).any(axis=1).mean()) if n else 0.0,
                   top5_k=k5, balanced_accuracy=float(np.mean(present)) if present else 0.0,
                   per_class=per_class, confusion=confusion.tolist(), n=n)


# ---------------------------------------------------------------------------------------------------- protocol

def evaluate(x: np.ndarray, y: np.ndarray, classes: list, config: ProbeConfig | None = None,
             train_mask: np.ndarray | None = None) -> ProbeResult:
    """Run the linear probe and both kNNs with stratified k-fold, or on a fixed train/val split.

    x: [N, D] features, y: [N] class indices into classes. With train_mask, rows where it is True train and the
    rest are evaluated; otherwise every row is predicted once, by the fold that held it out.
    """
    config = config or ProbeConfig()
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be [N, D] with one label per row; got {x.shape} and {len(y)} labels")
    if train_mask is not None:
        train_mask = np.asarray(train_mask, bool)
        splits = [(np.flatnonzero(train_mask), np.flatnonzero(~train_mask))]
        layout = "train/val"
    else:
        if config.folds < 2:
            raise ValueError("k-fold evaluation needs at least 2 folds")
        fold_of = stratified_folds(y, config.folds, config.seed)
        splits = [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(config.folds)]
        layout = "folds"
    n_classes = len(classes)
    tested = np.concatenate([te for _, te in splits])
    linear = np.zeros((len(x), n_classes), np.float32)
    knn = np.zeros_like(linear)
    majority = np.zeros_like(linear)
    weight_decays, folds_top1 = [], []
    for train, test in splits:
        head = LinearClassifier.fit(x[train], y[train], n_classes, config)
        weight_decays.append(head.weight_decay)
        linear[test] = head.logits(x[test])
        folds_top1.append(float((linear[test].argmax(1) == y[test]).mean()) if len(test) else 0.0)
        knn[test] = knn_scores(x[train], y[train], x[test], n_classes, config.knn_k, config.knn_temperature)
        majority[test] = knn_scores(x[train], y[train], x[test], n_classes, config.majority_k, weighted=False)
    return ProbeResult(
        classes=list(classes), n=len(tested), layout=layout, config=config,
        linear=compute_metrics(y[tested], linear[tested], classes),
        knn=compute_metrics(y[tested], knn[tested], classes),
        majority=compute_metrics(y[tested], majority[tested], classes),
        weight_decays=weight_decays, folds_top1=folds_top1)


def format_confusion(classes: list, confusion: list, width: int = 12) -> str:
    """The confusion matrix as a text table: rows are true classes, columns predictions."""
    names = [str(c)[:width] for c in classes]
    cell = max(5, max(len(str(v)) for row in confusion for v in row) + 1) if confusion else 5
    head = " " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(len(names)))
    lines = [head]
    for i, (name, row) in enumerate(zip(names, confusion)):
        lines.append(f"{name:<{width}}{i:>2}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
