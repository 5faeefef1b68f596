"""The training loop: torchrun DDP, AMP, channels_last, exact checkpoint/resume, signals, health metrics."""
from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .budget import BudgetTimer, agree, fitted_steps, timing_window
from .checkpoint import (describe_init, init_weights, load_checkpoint, remove_stale_temp_files, rng_state,
                         save_checkpoint, set_rng_state)
from .config import ConfigError, TrainConfig
from .data import (DataError, file_list_digest, list_images, make_loader, normalize_views, steps_per_epoch,
                   stop_loader_workers)
from .distributed import Runtime, convert_sync_batchnorm, is_distributed, setup, stop_together, teardown
from .lars import LARS, lr_scale, param_groups, set_lr
from .metrics import HealthLog
from .model import build_network
from .objectives import Views
from .objectives import get as get_objective

# Keys that may change when a run is resumed; everything else must match the checkpoint's config.
RUNTIME_KEYS = {"num_workers", "decode_cache", "log_every", "checkpoint_every", "max_steps", "compile", "monitor_data",
                "monitor_every", "monitor_k", "description", "export_input_size", "export_resize_size",
                "export_interpolation", "alarm_std", "alarm_rank", "rankme_samples"}
# Ctrl-C too: it checkpoints the step in flight instead of losing everything since the last checkpoint.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGUSR1/SIGINT after writing a checkpoint."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written, "
                         "re-run the same command to resume")


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config's amp mode on a device (None: full fp32)."""
    if mode == "none":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def resume_config(new: TrainConfig | None, saved: dict, run_dir: Path) -> TrainConfig:
    """The config of a resumed run: the saved one, with runtime keys taken from the new one if given."""
    old = TrainConfig.from_dict(saved)
    if new is None:
        return old
    if not new.schedule_steps:  # a time_budget run decided its length: the same command resumes that schedule
        new = new.replace(schedule_steps=old.schedule_steps)
    changed = [k for k, v in new.to_dict().items() if k not in RUNTIME_KEYS and old.to_dict()[k] != v]
    if changed:
        k = changed[0]
        raise ConfigError(f"{run_dir} holds a run started with {k}={old.to_dict()[k]!r}, not {new.to_dict()[k]!r}"
                          f" (also differing: {', '.join(changed[1:]) or 'nothing else'}); resume with the same "
                          "settings, or pass a new --out")
    return old.replace(**{k: getattr(new, k) for k in RUNTIME_KEYS})


class _StopFlag:
    """Turns SIGTERM/SIGUSR1/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.signum = 0
        self.previous = {}

    def __enter__(self):
        for s in STOP_SIGNALS:
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        if signum == signal.SIGINT:
            # A second Ctrl-C quits at once (KeyboardInterrupt), for whoever cannot wait for the step to end.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print("\nCtrl-C: stopping after this step with a checkpoint; press Ctrl-C again to quit without one",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def agreed(self, device) -> int:
        """The signal any rank received (0 if none), the same on every rank."""
        if not is_distributed():
            return self.signum
        flag = torch.tensor([self.signum], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1/SIGINT to the main process, which checkpoints and stops them."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _gather_rng() -> list:
    """Every rank's RNG states, in rank order."""
    state = rng_state()
    if not is_distributed():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


class Trainer:
    """One run: build everything from a TrainConfig, resume if the run folder has a checkpoint, train."""

    def __init__(self, config: TrainConfig | None, data: str | Path, out: str | Path, device: str = "auto",
                 progress: bool | None = None):
        self.rt: Runtime = setup(device)
        self.run_dir = Path(out)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder for the run (checkpoint.pt, metrics.jsonl)")
        self.data = Path(data)
        checkpoint = load_checkpoint(self.run_dir)
        if checkpoint is None and config is None:
            raise ConfigError(f"{self.run_dir} has no checkpoint to resume; pass --recipe to start a run")
        self.config = resume_config(config, checkpoint["config"], self.run_dir) if checkpoint else config
        self.checkpoint = checkpoint
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.files = list_images(self.data)
        self.files_digest = file_list_digest(self.data, self.files)
        self._build()

    def _build(self):
        c, rt = self.config, self.rt
        torch.manual_seed(c.seed)
        random.seed(c.seed)
        np.random.seed(c.seed)
        self.objective = get_objective(**c.objective)
        model = build_network(c, head=self.objective.head(c.embedding_dim))
        if rt.world_size > 1 and c.sync_bn:
            model = convert_sync_batchnorm(model, rt.device)
        model.to(rt.device)
        if c.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        # A bad init_from fails here, before the loader, RAM cache and monitor are built; a download or file that
        # fails on one rank only stops every rank, rather than leaving the others waiting in DDP's first collective.
        self.init: dict = {}
        if c.init_from and not self.checkpoint:
            with stop_together("loading init_from", rt.device):
                self.init = init_weights(model, c)
        self.objective.attach(model)  # e.g. a target network copied from the starting weights, before DDP's hooks
        self.objective.to(rt.device)
        net = model
        if rt.world_size > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.net = torch.compile(net) if c.compile else net
        batch_factor = c.batch_size / 256  # the paper's linear lr scaling
        self.optimizer = LARS(param_groups(model, c.lr_weights * batch_factor, c.lr_biases * batch_factor),
                              weight_decay=c.weight_decay, momentum=c.momentum, eta=c.lars_eta)
        self.amp = amp_dtype(c.amp, rt.device)
        # fp16 needs loss scaling; bf16 has fp32's exponent range and does not.
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=self.amp == torch.float16)
        self.loader, self.sampler = make_loader(self.files, c, rt.rank, rt.world_size,
                                                pin_memory=rt.device.type == "cuda")
        self.loader.worker_init_fn = _ignore_stop_signals
        self.steps_per_epoch = steps_per_epoch(len(self.files), c, rt.world_size)
        self.total_steps = c.schedule_steps or c.epochs * self.steps_per_epoch
        self.warmup_steps = round(c.warmup_epochs * self.steps_per_epoch)
        # Only a run whose length is still open is timed; a resumed budget run already has its schedule_steps.
        self.budget = BudgetTimer(*timing_window(self.warmup_steps)) if c.time_budget and not c.schedule_steps \
            else None
        self.mean = torch.tensor(c.mean, device=rt.device).view(1, 3, 1, 1)
        self.std = torch.tensor(c.std, device=rt.device).view(1, 3, 1, 1)
        self.step, self.bad_files, self.bad_examples, self.elapsed = 0, 0, [], 0.0
        self.last_metrics: dict = {}
        self.monitor = None
        with stop_together("building the kNN monitor", rt.device):
            if c.monitor_data and rt.is_main:
                from .monitor import KnnMonitor

                self.monitor = KnnMonitor(c.monitor_data, c)
        if self.checkpoint:
            self._restore(self.checkpoint)

    def _restore(self, ck: dict):
        self.model.load_state_dict(ck["model"])
        self.objective.load_state_dict(ck.get("objective", {}))  # absent in checkpoints from before objectives
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        if ck["steps_per_epoch"] != self.steps_per_epoch:
            raise DataError(f"{self.data} now gives {self.steps_per_epoch} steps per epoch, the run in "
                            f"{self.run_dir} had {ck['steps_per_epoch']}; the data changed, so resume "
                            "cannot continue the same schedule (pass a new --out)")
        self._check_same_images(ck["data"])
        self.step = ck["step"]
        self.bad_files, self.bad_examples = ck["data"]["bad_files"], list(ck["data"]["bad_examples"])
        self.elapsed = ck["elapsed_s"]
        self.last_metrics = dict(ck.get("metrics", {}))
        self.init = dict(ck.get("init", {}))
        states = ck["rng"]
        set_rng_state(states[self.rt.rank % len(states)])

    def _check_same_images(self, recorded: dict) -> None:
        """A resume must see the images the run started on: the sampler's indexes point into this file list."""
        if "files_digest" in recorded:  # a moved or copied folder with the same file names resumes
            same = recorded["files_digest"] == self.files_digest
        else:  # checkpoints from before the digest: the folder itself must be the same
            same = recorded["path"] == str(self.data.resolve())
        if not same:
            raise DataError(f"{self.run_dir} was trained on the images under {recorded['path']}; {self.data} holds "
                            "other files, so resuming would continue the schedule on different data. Pass the "
                            "original --data, or a new --out to start a run on this folder")

    def state(self, finished: bool = False) -> dict:
        """Everything needed to continue exactly here (tensors and primitives only)."""
        rng = _gather_rng()
        return {
            "format": 1, "config": self.config.to_dict(), "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "sampler": {"epoch": self.step // self.steps_per_epoch,
                        "start": (self.step % self.steps_per_epoch) * (self.config.batch_size // self.rt.world_size),
                        "seed": self.config.seed},
            "rng": rng, "world_size": self.rt.world_size, "device": self.rt.device.type, "finished": finished,
            "elapsed_s": self.elapsed,
            "metrics": self.last_metrics, "init": self.init,
            "data": {"path": str(self.data.resolve()), "images": len(self.files), "repeats": self.config.repeats,
                     "files_digest": self.files_digest,
                     "bad_files": self.bad_files, "bad_examples": self.bad_examples[:20]},
        }

    def save(self, finished: bool = False) -> None:
        """Checkpoint (all ranks take part in gathering RNG states; rank 0 writes)."""
        state = self.state(finished)
        with stop_together(f"writing the checkpoint of step {self.step}", self.rt.device):
            if self.rt.is_main:
                save_checkpoint(state, self.run_dir)

    def train_step(self, x1: torch.Tensor, x2: torch.Tensor,
                   *small: torch.Tensor) -> tuple[float, dict, torch.Tensor, torch.Tensor]:
        """One optimizer step on a local batch of uint8 views (and small views).

        Returns (loss, the objective's named parts, z1, trunk features of view 1), all detached.
        """
        rt, c = self.rt, self.config
        set_lr(self.optimizer, lr_scale(self.step, self.total_steps, self.warmup_steps, c.final_lr_ratio))
        views = tuple(normalize_views(x.to(rt.device, non_blocking=True), self.mean, self.std, c.channels_last)
                      for x in (x1, x2, *small))
        with torch.autocast(rt.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            z, p, h1 = self.net(*views)
            # Inside autocast so that a target network runs at the network's precision; every loss computes
            # its own arithmetic in float32.
            loss, parts = self.objective.loss(Views(z=z, p=p, inputs=views))
        self.optimizer.zero_grad(set_to_none=True)
        # One global loss, but DDP averages gradients over ranks: scale by world size to get its true gradient.
        self.scaler.scale(loss * rt.world_size).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.objective.after_step(self.model, self.step, self.total_steps)
        return float(loss.detach()), parts, z[0].detach(), h1

    def fit(self) -> dict:
        """Train until the schedule (or max_steps) ends; returns the last health record."""
        c, rt = self.config, self.rt
        with stop_together("clearing stale files from the run folder", rt.device):
            if rt.is_main and self.run_dir.is_dir():
                remove_stale_temp_files(self.run_dir)  # what a write killed in an earlier session left
        if self.checkpoint and self.checkpoint.get("finished"):
            self._say(f"{self.run_dir} is already finished ({self.step} steps); nothing to do")
            return self.last_metrics
        health = HealthLog(self.run_dir if rt.is_main else None, c, self.total_steps, write=self._say)
        with stop_together("preparing the run folder", rt.device):
            if rt.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                health.truncate(self.step)
                self._say(f"training {c.architecture} on {len(self.files)} images ({c.recipe}), {rt.world_size} "
                          f"process(es) on {rt.device.type}, {self.total_steps} steps of global batch {c.batch_size}"
                          + (f", resuming at step {self.step}" if self.step else "")
                          + (f"; starting from {describe_init(self.init)}" if self.init and not self.step else ""))
                if self.step == 0 and self.monitor is not None:  # the random-init baseline the monitor is compared to
                    health.note({"step": 0, "epoch": 0, **self._monitor()})
        last = self._last_step()
        with _StopFlag() as stop, tqdm(total=last, initial=self.step, disable=not (self.progress and rt.is_main),
                                       unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
            while self.step < last:
                epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_position(epoch, in_epoch * (c.batch_size // rt.world_size))
                started, ran = time.perf_counter(), False
                for views, bad in self._agreed_batches():
                    ran = True
                    if self.budget:
                        self.budget.observe(self.step)
                    loss, parts, z1, h1 = self.train_step(*views)
                    bar.update(1)
                    decided = bool(self.budget and self.budget.due(self.step))
                    if decided:
                        self._fit_schedule_to_budget(self.elapsed + time.perf_counter() - started)
                        last = bar.total = self._last_step()
                        health.total_steps = self.total_steps
                    health.update(loss, parts, z1, h1, views[0].shape[0] * rt.world_size, bad)
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if self.step % c.log_every == 0 or end_of_epoch or self.step == last:
                        with stop_together(f"logging step {self.step}", rt.device):
                            extra = self._monitor() if end_of_epoch and self._monitor_due() else None
                            self.last_metrics = health.emit(self.step, epoch, self.optimizer.param_groups[0]["lr"],
                                                            extra)
                        bar.set_postfix(loss=f"{self.last_metrics['loss']:.1f}",
                                        rank=f"{self.last_metrics['rankme']:.0f}")
                    signum = stop.agreed(rt.device)
                    periodic = c.checkpoint_every and self.step % c.checkpoint_every == 0
                    # A decided schedule is saved at once: a resume must not time the run and decide again.
                    if periodic or end_of_epoch or signum or decided or self.step >= last:
                        self.elapsed += time.perf_counter() - started
                        started = time.perf_counter()
                        self.save(finished=self.step >= self.total_steps)
                    if signum:
                        raise Interrupted(signum, self.step)
                    if end_of_epoch or self.step >= last:
                        break
                if not ran:
                    raise DataError(f"the loader of {self.data} gave no batch at step {self.step}")
        self._say(f"done: {self.step} steps in {self.elapsed / 60:.1f} min; checkpoint in {self.run_dir}")
        return self.last_metrics

    def _last_step(self) -> int:
        """Where this process stops: the schedule's end, or max_steps if that comes first."""
        return self.total_steps if not self.config.max_steps else min(self.total_steps, self.config.max_steps)

    def _fit_schedule_to_budget(self, spent_s: float) -> None:
        """Fix the lr schedule's length from the timed steps (the same on every rank) and say what was decided."""
        c, window = self.config, (self.budget.started_step, self.step)
        seconds_per_step, spent_s = agree([self.budget.seconds_per_step(self.step), spent_s], self.rt.device)
        full = c.epochs * self.steps_per_epoch
        steps, warning = fitted_steps(c.time_budget * 60, spent_s, seconds_per_step, self.step, full,
                                      self.warmup_steps)
        self.config = c.replace(schedule_steps=steps)
        self.total_steps, self.budget = steps, None
        if warning:
            self._say(f"warning: {warning}")
        self._say(f"time budget {c.time_budget:g} min: {seconds_per_step:.2f} s per step over steps {window[0]}-"
                  f"{window[1]}, so the lr schedule is {steps} steps ({steps / self.steps_per_epoch:.2f} of "
                  f"{c.epochs} epochs)")

    def _agreed_batches(self):
        """The loader's batches, each released once every rank has fetched its own; yields (views, bad files).

        A data error on one rank stops every rank here, before the step: had that rank raised alone, the others
        would wait for it inside the model's collectives, where NCCL (unlike gloo) does not notice a peer that
        left and waits out the process group timeout. The bad-file count yielded is the sum over ranks.
        """
        batches = iter(self.loader)
        while True:
            error = None
            try:
                views, bad = next(batches)
            except StopIteration:
                return  # after the same number of batches on every rank (equal shards, drop_last)
            except Exception as e:  # e.g. a loader worker that died or hit an unexpected decode error
                error, bad = e, []
            else:
                if views is None:
                    error = DataError(f"a whole batch of files under {self.data} was unreadable "
                                      f"(e.g. {bad[0][0]}: {bad[0][1]}); clean the folder")
                elif len(views[0]) < 2:  # BatchNorm and the loss standardize along the batch: one image is none
                    error = DataError(f"a batch of files under {self.data} had a single readable image (e.g. "
                                      f"{bad[0][0]}: {bad[0][1]}); clean the folder")
            failed, n_bad = self._agree_on_batch(error is not None, bad)
            if error is not None:
                raise error
            if failed:
                raise DataError(f"process {', '.join(map(str, failed))} of {self.rt.world_size} failed to load its "
                                f"batch for step {self.step + 1} (its own message says why); stopping too")
            yield views, n_bad

    def _agree_on_batch(self, failed: bool, bad: list) -> tuple[list[int], int]:
        """All ranks: which ranks failed to get a batch, and the bad files over all ranks (counted and noted)."""
        rt = self.rt
        if not is_distributed():
            votes, n_bad = [int(failed)], len(bad)
        else:
            # One small all_reduce per step: a flag per rank and the bad-file count, summed.
            agreed = torch.zeros(rt.world_size + 1, dtype=torch.int64, device=rt.device)
            agreed[rt.rank], agreed[-1] = int(failed), len(bad)
            dist.all_reduce(agreed)
            votes, n_bad = agreed[:-1].tolist(), int(agreed[-1])
        failed_ranks = [r for r, v in enumerate(votes) if v]
        if failed_ranks:
            return failed_ranks, 0
        if n_bad and len(self.bad_examples) < 20 and is_distributed():
            # Only when some rank had bad files; the condition is the same on every rank (all hold the same list).
            gathered = [None] * rt.world_size
            dist.all_gather_object(gathered, bad)
            bad = [item for part in gathered for item in part]
        self.bad_files += n_bad
        for path, cause in bad:
            if len(self.bad_examples) < 20:
                self.bad_examples.append(f"{path}: {cause}")
                self._say(f"skipping unreadable file {path}: {cause}")
        return [], n_bad

    def _monitor_due(self) -> bool:
        epoch_done = self.step // self.steps_per_epoch
        return self.monitor is not None and epoch_done % self.config.monitor_every == 0

    def _monitor(self) -> dict:
        return self.monitor(self.model.trunk, self.rt.device, self.amp)

    def _say(self, text: str) -> None:
        if self.rt.is_main:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        """Stop the loader's workers and leave the process group."""
        stop_loader_workers(self.loader)
        teardown()


def fit(config: TrainConfig | None, data, out, device: str = "auto", progress: bool | None = None) -> dict:
    """Train (or resume) a run in folder `out` on the images under `data`; returns the last health record."""
    trainer = Trainer(config, data, out, device=device, progress=progress)
    try:
        return trainer.fit()
    finally:
        trainer.close()
