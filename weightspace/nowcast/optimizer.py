"""NowcastOptimizer: wrap any optimizer and jump ahead along the trajectory every ``period`` steps."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import NonFiniteWeights
from .core import Nowcaster, NowcastError, ParamLayout, horizon_schedule, nowcast_horizons

log = logging.getLogger(__name__)
SEARCH_RULES = ("lowest", "longest")


def _map_tensors(state: dict[str, Any], fn: Callable[[Tensor], Tensor]) -> dict[str, Any]:
    """One parameter's optimizer state with ``fn`` applied to its tensors (e.g. a copy, a device move)."""
    return {n: fn(v) if isinstance(v, Tensor) else v for n, v in state.items()}


@dataclass
class Jump:
    """One nowcast: the step, horizon, guard losses (NaN without a guard) and whether it was kept."""

    step: int
    k: int
    accepted: bool
    loss_before: float = math.nan
    loss_after: float = math.nan
    seconds: float = 0.0
    reason: str = ""


class NowcastOptimizer(torch.optim.Optimizer):
    """Drop-in optimizer that periodically replaces the parameters with a nowcast of the future ones.

    The base optimizer makes every step. Every ``period // context`` steps the model's values are
    copied (one ``torch.cat``) into a ring of the last ``context`` states in memory; every
    ``period`` steps the ``nowcaster`` predicts the parameters ``k`` spacings ahead, with ``k``
    from ``horizons`` (by default NiNo's decaying schedule rescaled to the nowcaster's largest
    horizon), and the model's trainable parameters are overwritten (buffers are left alone). The
    ring is then emptied: the next context is collected after the jump, as in NiNo (Knyazev et
    al. 2025) and WNN (Jang et al. 2023).

    ``guard`` (a callable returning a loss, e.g. on a held-out batch) is evaluated before and
    after each jump; a jump that makes it non-finite or larger than ``before + guard_tolerance *
    |before|`` is rolled back and recorded in :attr:`jumps` with ``accepted=False`` (and logged).
    With ``guard_delay`` d > 0 the verdict comes d base steps after the jump, and a rollback
    restores the pre-jump parameters and base optimizer state: a nowcast usually costs accuracy at
    once and pays off a few steps later (Knyazev et al. 2025 observe the same), so an immediate
    verdict rejects jumps that help. Measured in ``scripts/bench_nowcast.py``.
    ``horizon_search`` (multiples of the scheduled horizon, e.g. ``(1, 0.5, 0.25)``, capped at the
    nowcaster's ``max_horizon``; needs a guard) predicts each of those horizons (one network pass for
    the learned nowcasters), writes each in turn and keeps the one with the lowest guard loss
    (``search_rule="lowest"``) or the longest that passes the guard's own test at once (``"longest"``,
    backtracking as in a line search; the lowest if none passes); the guard then judges the kept one
    as usual. It suits long-horizon nowcasters (``nino_k40``: never slower than AdamW with it on the
    benchmark's seven tasks, two slower without), not short ones (the K = 16 default lost with it).
    ``reset_state`` clears the base optimizer's state (e.g. Adam's moments) after an accepted jump.
    It is off by default because keeping the state measured better on average: with the packaged
    NiNo and no guard, keeping AdamW's moments gave 0.93x / 1.22x / 1.11x / >1.61x / 1.06x fewer
    steps to target than Adam on the held-out digits-MLP / digits-CNN / tiny-GPT / digits-CNN at
    lr 3e-4 / breast-cancer tasks, resetting them 1.08x / 1.44x / 1.09x / >1.28x / 0.72x (3 seeds,
    ``scripts/bench_nowcast.py``; neither reached the target on the digits MLP at lr 3e-4).
    Nowcasting happens from step ``start`` and not at or after step ``stop`` (e.g. the last step
    of a budget, where a jump has no steps left to settle).

    ``param_groups`` and ``state`` are the base optimizer's, so LR schedulers and gradient clipping
    work on the wrapper as on the base optimizer; ``state_dict`` adds the collected context states,
    so a run resumed from a checkpoint nowcasts exactly as an uninterrupted one. When the nowcaster
    needs a graph, the model's :class:`WeightSpace` is traced once: here from ``example_input``, or,
    without one, on the first ``step()`` from the inputs of the model's first forward after this
    constructor (kept by a forward pre-hook that then removes itself).
    """

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, nowcaster: Nowcaster, *,
                 period: int = 100, horizons: Sequence[int] | None = None, example_input: Any = None,
                 space: Any = None, guard: Callable[[], float | Tensor] | None = None,
                 guard_tolerance: float = 0.0, guard_delay: int = 0, reset_state: bool = False,
                 horizon_search: Sequence[float] = (), search_rule: str = "lowest", start: int = 0,
                 stop: int | None = None) -> None:
        c = int(nowcaster.context)
        if period < c:
            raise NowcastError(f"period ({period}) must be at least the nowcaster's context ({c} states): the "
                               f"context states are taken period // context steps apart")
        self.model, self.base, self.nowcaster = model, base_optimizer, nowcaster
        self.period, self.spacing, self.context = period, period // c, c
        self.layout: ParamLayout | None = None
        self._bound: list[tuple[nn.Parameter, int, int]] = []
        self._seen: tuple | None = None
        self._hook: Any = None
        if nowcaster.needs_space and space is None and example_input is not None:
            from ..space import WeightSpace

            space = WeightSpace.from_module(model, example_input)
        if nowcaster.needs_space and space is None:
            self._hook = model.register_forward_pre_hook(self._capture, with_kwargs=True)
        else:
            self._set_layout(ParamLayout.from_space(space) if space is not None else ParamLayout.from_module(model))
        if horizons is None:
            horizons = horizon_schedule(nowcaster.max_horizon) if nowcaster.max_horizon else \
                horizon_schedule(16)
        self.horizons = [int(k) for k in horizons]
        if not self.horizons or min(self.horizons) < 1:
            raise NowcastError(f"horizons must be positive integers, got {list(horizons)}")
        if nowcaster.max_horizon is not None and max(self.horizons) > nowcaster.max_horizon:
            raise NowcastError(f"horizons {self.horizons} exceed the nowcaster's max_horizon "
                               f"({nowcaster.max_horizon}): {type(nowcaster).__name__} was trained for horizons "
                               f"1..{nowcaster.max_horizon}")
        if not 0 <= guard_delay < self.spacing:
            raise NowcastError(f"guard_delay ({guard_delay}) must be in [0, period // context = {self.spacing}): the "
                               f"verdict must come before the next context state is collected")
        self.horizon_search = [float(f) for f in horizon_search]
        if self.horizon_search and (guard is None or not all(0 < f < math.inf for f in self.horizon_search)):
            raise NowcastError(f"horizon_search {list(horizon_search)} needs a guard to choose with and positive "
                               f"multiples of the scheduled horizon"
                               + ("" if guard is not None else "; no guard was given"))
        if search_rule not in SEARCH_RULES:
            raise NowcastError(f"search_rule {search_rule!r} is not one of {', '.join(SEARCH_RULES)}")
        self.search_rule = search_rule
        self.guard, self.guard_tolerance, self.reset_state = guard, guard_tolerance, reset_state
        self.guard_delay = guard_delay
        self._pending: tuple[Jump, int, Tensor, dict] | None = None
        self.start, self.stop = start, stop
        self.jumps: list[Jump] = []
        self.num_steps = 0
        self._ring: Tensor | None = None
        self._filled = 0
        super().__init__(self._base_params(), dict(base_optimizer.defaults))
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self.defaults = base_optimizer.defaults

    # ------------------------------------------------------------------ layout (traced lazily)
    def _set_layout(self, layout: ParamLayout) -> None:
        self._bound = layout.bind(self.model)
        check = getattr(self.nowcaster, "check_space", None)
        if check is not None:
            check(layout)
        self.layout = layout

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: keep the first forward's inputs to trace the model from on the first ``step()``."""
        if kwargs:
            self._seen = NowcastError(f"{type(module).__name__}.forward was called with keyword arguments "
                                      f"{sorted(kwargs)}; tracing replays positional inputs only: pass "
                                      f"example_input (or space=) to NowcastOptimizer")
        else:
            self._seen = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        self._hook.remove()
        self._hook = None

    def _trace(self) -> None:
        """Trace the model's WeightSpace from the inputs its first forward saw (example_input not given)."""
        if isinstance(self._seen, NowcastError):
            raise self._seen
        if self._seen is None:
            raise NowcastError(f"{type(self.nowcaster).__name__} works on the model's neural graph, which is traced "
                               f"from the model's inputs: step() was called before any forward of the model; run "
                               f"a forward first or pass example_input (or space=)")
        from ..space import WeightSpace

        self._set_layout(ParamLayout.from_space(WeightSpace.from_module(self.model, self._seen)))
        self._seen = None
        if self._ring is not None and self._ring.shape[1] != self.layout.num_values:
            raise NowcastError(f"saved nowcast context has {self._ring.shape[1]} values per state, the traced model "
                               f"has {self.layout.num_values}: was it saved for another model?")

    # ------------------------------------------------------------------ optimizer interface
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus a ``"nowcast"`` entry: step count, collected context
        states, past jumps (they pick the next horizon) and a pending delayed-guard verdict, so a
        resumed run nowcasts exactly as an uninterrupted one."""
        sd = self.base.state_dict()
        pending = None
        if self._pending is not None:
            rec, due, params, state = self._pending
            index = {p: i for i, p in enumerate(self._base_params())}
            pending = {"jump": self.jumps.index(rec), "due": due, "params": params.clone(),
                       "state": {index[p]: _map_tensors(st, Tensor.clone) for p, st in state.items()}}
        sd["nowcast"] = {"num_steps": self.num_steps, "filled": self._filled,
                         "ring": None if self._ring is None else self._ring.clone(),
                         "jumps": [asdict(j) for j in self.jumps], "pending": pending}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (or a plain one of the base optimizer)."""
        state_dict = dict(state_dict)
        nc = state_dict.pop("nowcast", None)
        ring = None if nc is None else nc["ring"]
        P = self.layout.num_values if self.layout is not None else None
        if ring is not None and (ring.shape[0] != self.context or (P is not None and ring.shape[1] != P)):
            raise NowcastError(f"saved nowcast context has shape {tuple(ring.shape)}, this model and nowcaster "
                               f"need ({self.context}, {P if P is not None else 'P'}): was it saved for another model?")
        self.base.load_state_dict(state_dict)
        if nc is None:
            return
        params = self._base_params()
        device = params[0].device if params else None
        self.num_steps, self._filled = int(nc["num_steps"]), int(nc["filled"])
        self._ring = None if ring is None else ring.to(device)
        self.jumps = [Jump(**j) for j in nc["jumps"]]
        self._pending = None
        if nc["pending"] is not None:
            pd = nc["pending"]
            params = self._base_params()
            state = {params[int(i)]: _map_tensors(st, lambda v, d=params[int(i)].device: v.to(d))
                     for i, st in pd["state"].items()}
            self._pending = (self.jumps[int(pd["jump"])], int(pd["due"]), pd["params"].to(device), state)

    def _base_params(self) -> list[Tensor]:
        return [p for g in self.base.param_groups for p in g["params"]]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self.base.step(closure) if closure is not None else self.base.step()
        if self.layout is None:
            self._trace()
        self.num_steps += 1
        if self._pending is not None and self.num_steps >= self._pending[1]:
            self._verdict()
        t = self.num_steps - self.start
        if t > 0:
            phase = t % self.period or self.period
            ahead = self.period - phase
            if ahead % self.spacing == 0 and ahead < self.context * self.spacing:
                self._record()
            if phase == self.period and self._filled >= self.context and \
                    (self.stop is None or self.num_steps < self.stop):
                self.jump()
        return loss

    # ------------------------------------------------------------------ nowcasting
    def _record(self) -> None:
        flat = self.layout.flatten(self.model)
        self.layout.check_finite(flat, f"parameters at step {self.num_steps}")
        if self._ring is None or self._ring.shape[1] != flat.numel() or self._ring.device != flat.device:
            self._ring = flat.new_empty(self.context, flat.numel())
            self._filled = 0
        if self._filled < self.context:
            self._ring[self._filled] = flat
            self._filled += 1
        else:
            self._ring = torch.roll(self._ring, -1, 0)
            self._ring[-1] = flat

    def _write(self, flat: Tensor) -> None:
        with torch.no_grad():
            for p, a, b in self._bound:
                p.copy_(flat[a:b].view_as(p))

    def _guard_loss(self) -> float:
        with torch.no_grad():
            v = self.guard()
        return float(v.detach()) if isinstance(v, Tensor) else float(v)

    def jump(self) -> Jump:
        """Nowcast now from the states collected so far (called automatically every ``period`` steps)."""
        if self._ring is None or self._filled < self.context:
            raise NowcastError(f"a nowcast needs {self.context} collected states, have {self._filled}")
        t0 = time.perf_counter()
        k = self.horizons[min(len(self.jumps), len(self.horizons) - 1)]
        ctx = self._ring
        before = self._guard_loss() if self.guard is not None else math.nan
        searched = None
        if self.horizon_search:
            k, pred, searched = self._search(ctx, k, before)
        else:
            pred = self.nowcaster.nowcast(ctx, k, self.layout)
        rec = Jump(self.num_steps, k, True, before)
        if not bool(torch.isfinite(pred).all()):
            rec.accepted, rec.reason = False, "nowcast is not finite"
        else:
            self._write(pred)
            if self.guard is not None and self.guard_delay:
                state = {p: _map_tensors(st, Tensor.clone) for p, st in self.base.state.items()}
                self._pending = (rec, self.num_steps + self.guard_delay, ctx[-1].clone(), state)
            elif self.guard is not None:
                rec.loss_after = self._guard_loss() if searched is None else searched
                rec.accepted, rec.reason = self._judge(before, rec.loss_after)
            if not rec.accepted:
                self._write(ctx[-1])
        if rec.accepted and self.reset_state:
            self.base.state.clear()
        if not rec.accepted:
            log.info("nowcast at step %d (k=%d) rolled back: %s", rec.step, k, rec.reason)
        self._filled = 0
        rec.seconds = time.perf_counter() - t0
        self.jumps.append(rec)
        return rec

    def _search(self, ctx: Tensor, k: int, before: float) -> tuple[int, Tensor, float]:
        """The horizon ``search_rule`` picks among ``horizon_search`` multiples of ``k``, its prediction and the guard
        loss there (each finite prediction is written to be judged; ``jump`` then writes the winner or restores the
        last state; an immediate guard reuses that loss rather than evaluating the same weights again)."""
        top = self.nowcaster.max_horizon or math.inf
        ks = sorted({min(top, max(1, round(k * f))) for f in self.horizon_search}, reverse=True)
        preds = nowcast_horizons(self.nowcaster, ctx, ks, self.layout)
        best = (math.inf, ks[0], preds[0])
        for kk, pred, finite in zip(ks, preds, torch.isfinite(preds).all(1).tolist()):
            if finite:
                self._write(pred)
                loss = self._guard_loss()
                if self.search_rule == "longest" and self._judge(before, loss)[0]:
                    return kk, pred, loss
                if loss < best[0]:
                    best = (loss, kk, pred)
        return best[1], best[2], best[0]

    def _judge(self, before: float, after: float) -> tuple[bool, str]:
        if not math.isfinite(after):
            return False, "guard loss is not finite after the jump"
        if after > before + self.guard_tolerance * abs(before):
            return False, f"guard loss rose from {before:.4g} to {after:.4g}"
        return True, ""

    def _verdict(self) -> None:
        """Delayed guard: ``guard_delay`` steps after a jump, keep it or restore the pre-jump parameters and state."""
        assert self._pending is not None
        t0 = time.perf_counter()
        rec, _, params, state = self._pending
        self._pending = None
        rec.loss_after = self._guard_loss()
        rec.accepted, rec.reason = self._judge(rec.loss_before, rec.loss_after)
        if not rec.accepted:
            self._write(params)
            self.base.state.clear()
            self.base.state.update(state)
            rec.reason += f" ({self.guard_delay} steps after the jump)"
            log.info("nowcast at step %d (k=%d) rolled back: %s", rec.step, rec.k, rec.reason)
        rec.seconds += time.perf_counter() - t0

    @property
    def rollbacks(self) -> list[Jump]:
        return [j for j in self.jumps if not j.accepted]

    @property
    def nowcast_seconds(self) -> float:
        return sum(j.seconds for j in self.jumps)

    def __repr__(self) -> str:
        return (f"NowcastOptimizer({type(self.base).__name__}, {self.nowcaster!r}, period={self.period}, "
                f"context={self.context}, jumps={len(self.jumps)}, rollbacks={len(self.rollbacks)})")


__all__ = ["NowcastOptimizer", "Jump", "NonFiniteWeights"]
