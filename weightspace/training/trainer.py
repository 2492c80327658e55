"""A small trainer shared by every metanetwork: devices, DDP, resumable safetensors checkpoints, logs and plots."""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ConfigError, WeightSpaceError
from ..utils import atomic_write, atomic_write_text, did_you_mean, resolve_device
from .distributed import init_distributed

LATEST = "latest.json"
BEST_WEIGHTS = "best_model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
RESUME_IGNORED = ("progress", "checkpoint_every", "log_every", "eval_every", "device", "plot")


class CheckpointMismatch(WeightSpaceError):
    """A training checkpoint was written with a different configuration than the one resuming it."""


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: Tensor, device: torch.device | str = "cpu") -> tuple[Any, Tensor]: ...


PRECISIONS = ("bf16", "fp32")
"""``TrainConfig.precision``: bf16 autocast saves memory on CUDA, but on small metanetwork graphs its casts
cost more than they save (BENCHMARKS.md, gpu_check: MLP graphs train 1.4x faster in fp32 on an H200)."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Optimisation settings. ``batch_size`` is the global batch, split evenly across processes.

    Each field's ``metadata["help"]`` documents it; the training commands' options are generated
    from these fields (:func:`weightspace.training.add_train_arguments`).
    """

    steps: int = _opt(1000, "optimisation steps")
    batch_size: int = _opt(32, "global batch size, split evenly across processes")
    lr: float = _opt(1e-3, "peak AdamW learning rate")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    warmup: int = _opt(50, "linear warm-up steps before the cosine decay")
    min_lr_ratio: float = _opt(0.05, "final learning rate as a fraction of --lr")
    grad_clip: float | None = _opt(1.0, "gradient-norm clipping (0: none)")
    seed: int = _opt(0, "seed of the initialisation and of the batch order")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda:0")
    precision: str = _opt("bf16", "on CUDA: bf16 (autocast) or fp32; the CPU always trains in fp32")
    checkpoint_every: int = _opt(200, "steps between resumable checkpoints (0: none)")
    log_every: int = _opt(10, "steps between log records")
    eval_every: int = _opt(100, "steps between held-out evaluations (0: none)")
    progress: bool = _opt(True, "show a progress bar")
    plot: bool = _opt(True, "write loss.png at the end")
    ema: float = _opt(0.0, "decay of an exponential moving average of the weights, which evaluations read and the "
                           "model ends with (0: none)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"TrainConfig.ema must be in [0, 1), got {self.ema}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A config from a mapping (e.g. a saved ``trainer_state.json``); unknown keys raise :class:`ConfigError`."""
        names = [f.name for f in fields(cls)]
        for k in d:
            if k not in names:
                raise ConfigError(f"TrainConfig has no field {k!r}{did_you_mean(k, names)}; its fields are "
                                  f"{', '.join(names)}")
        return cls(**d)


@dataclass
class TrainResult:
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    graphs_per_second: float = 0.0
    out_dir: Path | None = None
    best_step: int | None = None
    """With early stopping: the step whose weights the model holds at the end (best validation metric)."""
    stopped_early: bool = False


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` (a key of the trainer's ``eval_fn`` result; lower is better) has not improved by
    more than ``min_delta`` for ``patience`` evaluations in a row, and end with the best weights seen."""

    metric: str
    patience: int = 5
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ConfigError(f"early-stopping patience must be at least 1 evaluation, got {self.patience}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """The global batch of step ``step``: a fixed function of (seed, step), so resuming needs no RNG state."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if batch_size > n:
        return perm
    return perm[pos * batch_size:(pos + 1) * batch_size]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the random draws (noise, dropout) of step ``step`` on process ``rank``."""
    return ((seed * 1_000_003 + step) * 65_537 + rank) % (2 ** 63)


@contextlib.contextmanager
def step_rng(seed: int, step: int, rank: int, device: torch.device) -> Iterator[None]:
    """Run the block on the global RNGs seeded by :func:`step_seed`, then give back their former state, so that
    a step's randomness is a function of (seed, step, rank) and a resumed run draws what an uninterrupted one did."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(step_seed(seed, step, rank))
        yield


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _model_config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "_hub_mixin_config", None)
    if cfg is None and hasattr(model, "config"):
        c = model.config
        cfg = c.to_dict() if hasattr(c, "to_dict") else (asdict(c) if hasattr(c, "__dataclass_fields__") else c)
    return json.loads(json.dumps(cfg or {}, default=str))


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    """Optimizer state as safetensors (tensors) with its non-tensor state in the file's metadata."""
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_optimizer(opt: torch.optim.Optimizer, path: Path, device: torch.device) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for k, v in json.loads(meta["scalars"]).items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in json.loads(meta["param_groups"])]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_model(model: nn.Module, directory: Path) -> None:
    """``save_pretrained`` when the model has it (safetensors + config.json), else bare safetensors."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        from safetensors.torch import save_model as st_save

        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / "model.safetensors", lambda tmp: st_save(model, str(tmp)))


def load_model_weights(model: nn.Module, directory: Path, device: torch.device) -> None:
    from safetensors.torch import load_model as st_load

    st_load(model, str(directory / "model.safetensors"), device=str(device))


def plot_history(history: list[dict[str, float]], path: Path, title: str = "training loss") -> Path:
    """PNG of the loss curve (and any eval metrics) over steps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    steps = [h["step"] for h in history if "loss" in h]
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], label="train loss")
    evals = [h for h in history if "eval_loss" in h]
    if evals:
        ax.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="held-out loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def ema_model(model: nn.Module, decay: float) -> "torch.optim.swa_utils.AveragedModel":
    """An exponential moving average of ``model``'s parameters and buffers (``torch.optim.swa_utils``).

    The decay is warmed up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average
    does not carry the first, untrained weights for long.
    """
    from torch.optim.swa_utils import AveragedModel

    def average(avg: Tensor, new: Tensor, n: Tensor) -> Tensor:
        if not avg.is_floating_point():
            return new
        d = torch.clamp((1 + n) / (10 + n), max=decay).to(avg.dtype)
        return avg * d + new * (1 - d)

    return AveragedModel(model, avg_fn=average, use_buffers=True)


class Trainer:
    """Trains ``model`` on a :class:`BatchSource` with AdamW, a warm-up + cosine schedule and gradient clipping.

    - ``device="auto"`` uses CUDA when present (with bf16 autocast unless ``precision="fp32"``), else the CPU.
    - Under torchrun (``WORLD_SIZE`` > 1) it wraps the model in DDP; each process takes an equal
      slice of every global batch, so N processes follow the same trajectory as one.
    - Every ``checkpoint_every`` steps it writes ``out_dir/ckpt-<step>/`` (model safetensors +
      config, optimizer safetensors, trainer state JSON) and points ``latest.json`` at it; a new
      Trainer on the same ``out_dir`` resumes there, refusing a checkpoint of another configuration.
    - The batch of each step and its random draws (diffusion noise, dropout: :func:`step_rng`) are a
      function of the seed, step and process only, so a fixed seed gives the same run and a resumed
      run equals an uninterrupted one.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any, Tensor], Tensor], data: BatchSource,
                 config: TrainConfig, out_dir: str | Path | None = None, *,
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, resume: bool = True,
                 early_stopping: EarlyStopping | None = None) -> None:
        if early_stopping is not None and (eval_fn is None or not config.eval_every):
            raise ConfigError("early stopping needs an eval_fn and eval_every > 0")
        self.config = config
        self.early_stopping = early_stopping
        self.best: dict[str, Any] = {"value": math.inf, "step": None, "bad": 0, "stopped": False}
        self._best_weights: dict[str, Tensor] | None = None
        self.device = resolve_device(config.device)
        self.rank, self.world = init_distributed(self.device)
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {self.world} processes")
        self.model = model.to(self.device)
        self.loss_fn, self.data, self.eval_fn = loss_fn, data, eval_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.averaged = ema_model(self.model, config.ema) if config.ema else None
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._running: list[float] = []
        if resume and self.out_dir is not None and (self.out_dir / LATEST).exists():
            self._resume()
        self.ddp: nn.Module = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        state = {"step": self.step, "config": asdict(self.config), "model_config": _model_config(self.model),
                 "model_class": type(self.model).__name__, "history": self.history, "running": self._running}
        if self.early_stopping is not None:
            state["early_stopping"] = {**asdict(self.early_stopping), **self.best}
        return state

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (rank 0 only); older checkpoints are removed."""
        if self.out_dir is None or self.rank != 0:
            return None
        d = self.out_dir / f"ckpt-{self.step:08d}"
        if d.exists():
            shutil.rmtree(d)
        save_model(self.model, d)
        save_optimizer(self.opt, d / "optimizer.safetensors")
        if self.averaged is not None:
            from safetensors.torch import save_file

            atomic_write(d / EMA_WEIGHTS, lambda tmp: save_file(
                {k: v.detach().clone() for k, v in self.averaged.state_dict().items()}, str(tmp)))
        if self._best_weights is not None:
            from safetensors.torch import save_file

            atomic_write(d / BEST_WEIGHTS, lambda tmp: save_file(self._best_weights, str(tmp)))
        atomic_write_text(d / "trainer_state.json", json.dumps(self._state(), indent=1))
        atomic_write_text(self.out_dir / LATEST, json.dumps({"checkpoint": d.name, "step": self.step}))
        for old in self.out_dir.glob("ckpt-*"):
            if old != d and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return d

    def _resume(self) -> None:
        assert self.out_dir is not None
        latest = json.loads((self.out_dir / LATEST).read_text())
        d = self.out_dir / latest["checkpoint"]
        try:
            state = json.loads((d / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointMismatch(f"cannot read training checkpoint {d}: {e}") from e
        mine, theirs = asdict(self.config), state["config"]
        defaults = asdict(TrainConfig())  # a field added since the checkpoint was written reads as its default
        diff = {k: (theirs.get(k, defaults[k]), v) for k, v in mine.items()
                if k not in RESUME_IGNORED and theirs.get(k, defaults[k]) != v}
        if self.early_stopping is not None:
            es = state.get("early_stopping") or {}
            for k, v in asdict(self.early_stopping).items():
                if es.get(k) != v:
                    diff[f"early_stopping.{k}"] = (es.get(k), v)
        elif state.get("early_stopping"):
            diff["early_stopping"] = (state["early_stopping"].get("metric"), None)
        if state.get("model_class") != type(self.model).__name__:
            diff["model_class"] = (state.get("model_class"), type(self.model).__name__)
        mc = _model_config(self.model)
        diff.update({f"model.{k}": (state["model_config"].get(k), v) for k, v in mc.items()
                     if state["model_config"].get(k) != v})
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise CheckpointMismatch(f"checkpoint {d} does not match this configuration ({lines}); use another "
                                     f"output folder or resume=False")
        load_model_weights(self.model, d, self.device)
        load_optimizer(self.opt, d / "optimizer.safetensors", self.device)
        self.step = int(state["step"])
        self.history = list(state["history"])
        self._running = list(state.get("running", []))
        if self.averaged is not None:
            from safetensors.torch import load_file

            if not (d / EMA_WEIGHTS).exists():
                raise CheckpointMismatch(f"checkpoint {d} holds no {EMA_WEIGHTS} to resume the weight average from")
            self.averaged.load_state_dict(load_file(str(d / EMA_WEIGHTS), device=str(self.device)))
        if self.early_stopping is not None:
            es = state["early_stopping"]
            self.best = {k: es[k] for k in self.best}
            if (d / BEST_WEIGHTS).exists():
                from safetensors.torch import load_file

                self._best_weights = load_file(str(d / BEST_WEIGHTS))

    # ------------------------------------------------------------------ loop
    @property
    def evaluated_model(self) -> nn.Module:
        """The model that evaluations read: the weight average when ``config.ema`` is set, else the model."""
        return self.averaged.module if self.averaged is not None else self.model

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.device.type == "cuda" and self.config.precision == "bf16")

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``config.steps`` (or ``stop_at``, to simulate an interruption) and return the history."""
        from ..utils import progress_bar

        cfg = self.config
        end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
        bar = progress_bar(total=cfg.steps, initial=self.step, desc="train", unit="step",
                   disable=not cfg.progress or self.rank != 0)
        n_graphs, t0 = 0, time.perf_counter()
        self.model.train()
        running = self._running
        while self.step < end and not self.best["stopped"]:
            idx = batch_indices(self.step, len(self.data), cfg.batch_size, cfg.seed)
            local = idx[self.rank::self.world]
            batch, y = self.data.batch(local, self.device)
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, cfg)
            with step_rng(cfg.seed, self.step, self.rank, self.device):
                with self._autocast():
                    loss = self.loss_fn(self.ddp, batch, y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            self.step += 1
            n_graphs += len(idx)
            running.append(float(loss.detach()))
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == end:
                rec = {"step": self.step, "loss": sum(running) / len(running), "lr": lr_at(self.step - 1, cfg)}
                running.clear()
                if self.eval_fn is not None and cfg.eval_every and (self.step % cfg.eval_every == 0
                                                                     or self.step == cfg.steps):
                    evaluated = self.evaluated_model
                    evaluated.eval()
                    rec.update(self.eval_fn(evaluated))
                    self.model.train()
                    self._track_best(rec)
                self.history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4g}", refresh=False)
            if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps
                                         or self.best["stopped"]):
                self.save_checkpoint()
        bar.close()
        if self.averaged is not None:
            self.model.load_state_dict(self.averaged.module.state_dict())
        if self._best_weights is not None:
            self.model.load_state_dict({k: v.to(self.device) for k, v in self._best_weights.items()})
        self.model.eval()
        seconds = time.perf_counter() - t0
        if self.out_dir is not None and self.rank == 0 and cfg.plot and self.history:
            plot_history(self.history, self.out_dir / "loss.png")
        return TrainResult(self.step, self.history, seconds, n_graphs / seconds if seconds > 0 else 0.0,
                           self.out_dir, self.best["step"], bool(self.best["stopped"]))

    def _track_best(self, rec: dict[str, float]) -> None:
        """Early stopping: remember the best weights by the monitored metric and count evaluations without gain.

        Under DDP every process takes rank 0's value, so all of them stop at the same step."""
        es = self.early_stopping
        if es is None:
            return
        if es.metric not in rec:
            raise ConfigError(f"early stopping monitors {es.metric!r}, which the evaluation does not report; it "
                              f"reports {sorted(k for k in rec if k not in ('step', 'loss', 'lr'))}")
        value = float(rec[es.metric])
        if self.world > 1:
            import torch.distributed as dist

            shared = torch.tensor([value], dtype=torch.float64, device=self.device)
            dist.broadcast(shared, 0)
            value = float(shared)
        if value < self.best["value"] - es.min_delta:
            self.best.update(value=value, step=self.step, bad=0)
            self._best_weights = {k: v.detach().cpu().clone() for k, v in self.evaluated_model.state_dict().items()}
        else:
            self.best["bad"] += 1
            if self.best["bad"] >= es.patience:
                self.best["stopped"] = True
