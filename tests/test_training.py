"""Training infrastructure: determinism, resume after interruption, DDP equivalence, config checks."""
import json
from pathlib import Path

import pytest
import torch

from process_group import process_group, run_processes
from test_predict import make_collection
from weightspace.collections import CheckpointCollection
from weightspace.predict import PropertyGraphs, PropertyPredictor
from weightspace.predict.api import PredictionLoss, mse_loss
from weightspace.errors import ConfigError
from weightspace.training import (CheckpointMismatch, TrainConfig, Trainer, gather_batch, load_optimizer,
                                  save_optimizer)
from weightspace.training.trainer import step_seed


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "c"
    make_collection(root, mlp_runs=6, cnn_runs=2, steps=2)
    return root


def load_store(root: Path) -> PropertyGraphs:
    return PropertyGraphs.from_collections(CheckpointCollection.open(root), ["test_acc"], progress=False)


def new_model(seed: int = 0, double: bool = False) -> PropertyPredictor:
    torch.manual_seed(seed)
    model = PropertyPredictor(targets=["test_acc"], hidden=8, layers=1, target_mean=[0.5], target_std=[0.2])
    return model.double() if double else model


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "batch_size": 4, "lr": 1e-2, "warmup": 2, "progress": False,
                          "checkpoint_every": 2, "log_every": 1, "device": "cpu", **kw})


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


def test_fixed_seed_gives_the_same_run(zoo):
    torch.set_num_threads(1)
    store = load_store(zoo)
    runs = []
    for _ in range(2):
        m = new_model()
        res = Trainer(m, mse_loss, store, config(checkpoint_every=0)).fit()
        runs.append((params(m), [h["loss"] for h in res.history]))
    assert_same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    m = new_model()
    Trainer(m, mse_loss, store, config(checkpoint_every=0, seed=1)).fit()
    assert any(not torch.equal(v, runs[0][0][k]) for k, v in params(m).items())


def test_resume_after_interruption_equals_uninterrupted(tmp_path, zoo):
    torch.set_num_threads(1)
    store = load_store(zoo)
    full = new_model()
    Trainer(full, mse_loss, store, config(), tmp_path / "full").fit()

    Trainer(new_model(), mse_loss, store, config(), tmp_path / "cut").fit(stop_at=3)
    latest = json.loads((tmp_path / "cut" / "latest.json").read_text())
    assert latest["step"] == 2
    ckpt = tmp_path / "cut" / latest["checkpoint"]
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "config.json", "optimizer.safetensors",
                                               "trainer_state.json"}
    resumed_model = new_model(seed=123)
    trainer = Trainer(resumed_model, mse_loss, store, config(), tmp_path / "cut")
    assert trainer.step == 2
    trainer.fit()
    assert_same(params(resumed_model), params(full))
    assert (tmp_path / "cut" / "loss.png").exists()

    latest = json.loads((tmp_path / "cut" / "latest.json").read_text())
    state_file = tmp_path / "cut" / latest["checkpoint"] / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["precision"]  # a checkpoint written before the field existed resumes as its default
    state_file.write_text(json.dumps(state))
    assert Trainer(new_model(), mse_loss, store, config(), tmp_path / "cut").step == latest["step"]
    with pytest.raises(CheckpointMismatch, match="precision: checkpoint 'bf16' vs now 'fp32'"):
        Trainer(new_model(), mse_loss, store, config(precision="fp32"), tmp_path / "cut")
    with pytest.raises(CheckpointMismatch, match="lr: checkpoint 0.01 vs now 0.02"):
        Trainer(new_model(), mse_loss, store, config(lr=2e-2), tmp_path / "cut")
    with pytest.raises(CheckpointMismatch, match="model.hidden"):
        other = PropertyPredictor(targets=["test_acc"], hidden=4, layers=1)
        Trainer(other, mse_loss, store, config(), tmp_path / "cut")


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_optimizer(opt, tmp_path / "opt.safetensors")
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_optimizer(opt2, tmp_path / "opt.safetensors", torch.device("cpu"))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k]))


def _ddp_worker(rank: int, world: int, init: str, root: str, out: str, rank_weight: float) -> None:
    with process_group(rank, world, init):
        model = new_model(double=True)
        trainer = Trainer(model, PredictionLoss(rank_weight), load_store(Path(root)),
                          config(checkpoint_every=0, plot=False))
        assert trainer.world == world
        trainer.fit()
        if rank == 0:
            torch.save(params(model), out)


@pytest.mark.parametrize("rank_weight", [pytest.param(0.0, marks=pytest.mark.slow), 1.0], ids=["mse", "mse+ranking"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, zoo, rank_weight):
    """In float64, so that Adam's normalisation cannot blow up float32 summation-order noise of ~1e-7.

    With the ranking loss, pairs across the two processes' halves of the batch must count too."""
    torch.set_num_threads(1)
    single = new_model(double=True)
    Trainer(single, PredictionLoss(rank_weight), load_store(zoo), config(checkpoint_every=0)).fit()
    out = tmp_path / "ddp.pt"
    run_processes(_ddp_worker, (str(zoo), str(out), rank_weight), tmp_path)
    assert_same(torch.load(out, weights_only=True), params(single), atol=1e-9)


def test_batch_must_split_evenly_across_processes(zoo, monkeypatch):
    import weightspace.training.trainer as tr

    monkeypatch.setattr(tr, "init_distributed", lambda device: (0, 3))
    with pytest.raises(ValueError, match="divisible"):
        Trainer(new_model(), mse_loss, load_store(zoo), config(batch_size=4))


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    with process_group(rank, world, init):
        t = torch.arange(3.0 + rank, dtype=torch.float64).add(10 * rank).requires_grad_()
        full = gather_batch(t)
        (full * torch.arange(1.0, len(full) + 1, dtype=torch.float64)).sum().backward()
        torch.save({"full": full.detach(), "grad": t.grad}, f"{out}.{rank}")


def test_gather_batch_concatenates_uneven_parts_and_routes_gradients_back(tmp_path):
    """Rank 0 holds 3 rows, rank 1 holds 4: everyone sees all 7; each row's gradient (summed over both
    processes' copies of the loss) returns to the process that owns it."""
    out = str(tmp_path / "g")
    run_processes(_gather_worker, (out,), tmp_path)
    expect = torch.tensor([0.0, 1, 2, 10, 11, 12, 13], dtype=torch.float64)
    weights = 2 * torch.arange(1.0, 8, dtype=torch.float64)
    r0, r1 = torch.load(f"{out}.0", weights_only=True), torch.load(f"{out}.1", weights_only=True)
    assert torch.equal(r0["full"], expect) and torch.equal(r1["full"], expect)
    assert torch.equal(r0["grad"], weights[:3]) and torch.equal(r1["grad"], weights[3:])


def test_train_config_from_dict_refuses_unknown_keys():
    from weightspace.errors import ConfigError

    assert TrainConfig.from_dict({"steps": 3, "lr": 0.1}) == TrainConfig(steps=3, lr=0.1)
    with pytest.raises(ConfigError, match="'bacth_size'.*did you mean 'batch_size'"):
        TrainConfig.from_dict({"bacth_size": 8})
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(precision="fp16")


def test_training_commands_share_options_generated_from_train_config():
    """predict train and nowcast train offer every TrainConfig field with the dataclass's defaults (only
    steps and batch_size are task-sized), so their training options cannot drift apart."""
    from dataclasses import fields

    from weightspace.cli import build_parser
    from weightspace.training import train_config_from_args

    p = build_parser()
    pred = p.parse_args(["predict", "train", "--collection", "c", "--out", "o"])
    now = p.parse_args(["nowcast", "train", "--collection", "c", "--out", "o"])
    a, b = train_config_from_args(pred), train_config_from_args(now)
    for f in fields(TrainConfig):
        if f.name in ("steps", "batch_size"):
            continue
        assert getattr(a, f.name) == getattr(b, f.name) == f.default, f.name
    args = p.parse_args(["nowcast", "train", "--collection", "c", "--out", "o", "--warmup", "7", "--min-lr-ratio",
                         "0.5", "--no-plot", "--grad-clip", "0", "--log-every", "3"])
    cfg = train_config_from_args(args)
    assert (cfg.warmup, cfg.min_lr_ratio, cfg.plot, cfg.grad_clip, cfg.log_every) == (7, 0.5, False, None, 3)


def test_each_step_draws_its_own_noise_and_a_resumed_run_draws_the_same(tmp_path, zoo):
    """The loss's random draws are fresh at every step and for every seed and process rank, the same after a
    resume, and the caller's global RNG is left where it was."""
    torch.set_num_threads(1)
    store = load_store(zoo)

    def run(out=None, stop_at=None, **kw):
        draws = []

        def noisy_loss(model, batch, y):
            draws.append(float(torch.randn(())))
            return mse_loss(model, batch, y)
        trainer = Trainer(new_model(), noisy_loss, store, config(**kw), out)
        before = torch.get_rng_state()
        trainer.fit(stop_at)
        assert torch.equal(torch.get_rng_state(), before)
        return draws

    full = run()
    assert len(set(full)) == len(full) == 6
    before_cut = run(tmp_path / "cut", stop_at=3)[:2]  # the checkpoint is at step 2; step 2 is drawn again
    assert before_cut + run(tmp_path / "cut") == full
    assert set(run(seed=1)).isdisjoint(full)
    assert step_seed(0, 2, 1) not in {step_seed(0, s, 0) for s in range(100)} | {step_seed(1, 2, 1)}


def test_ema_ends_with_the_warmed_up_exponential_average_of_the_weights(zoo):
    torch.set_num_threads(1)
    store = load_store(zoo)
    seen: list[dict[str, torch.Tensor]] = []
    evaluated: list[dict[str, torch.Tensor]] = []

    class Recording(Trainer):
        def fit(self, stop_at=None):
            step = self.opt.step

            def record(*a, **k):
                out = step(*a, **k)
                seen.append(params(self.model))
                return out
            self.opt.step = record
            return super().fit(stop_at)

    decay = 0.5
    m = new_model()
    Recording(m, mse_loss, store, config(checkpoint_every=0, ema=decay, eval_every=3),
              eval_fn=lambda model: evaluated.append(params(model)) or {}).fit()
    expected = dict(seen[0])
    for n, w in enumerate(seen[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        expected = {k: v * d + w[k] * (1 - d) if v.is_floating_point() else w[k] for k, v in expected.items()}
    assert_same(params(m), expected, atol=1e-6)
    assert any(not torch.equal(v, seen[-1][k]) for k, v in expected.items())
    assert_same(evaluated[-1], expected, atol=1e-6)


def test_ema_resumes_exactly_and_is_validated(tmp_path, zoo):
    torch.set_num_threads(1)
    store = load_store(zoo)
    full = new_model()
    Trainer(full, mse_loss, store, config(ema=0.9), tmp_path / "full").fit()
    Trainer(new_model(), mse_loss, store, config(ema=0.9), tmp_path / "cut").fit(stop_at=3)
    resumed = new_model(seed=5)
    Trainer(resumed, mse_loss, store, config(ema=0.9), tmp_path / "cut").fit()
    assert_same(params(resumed), params(full))
    with pytest.raises(CheckpointMismatch, match="ema: checkpoint 0.9 vs now 0.0"):
        Trainer(new_model(), mse_loss, store, config(), tmp_path / "cut")
    with pytest.raises(ConfigError, match="ema must be in"):
        config(ema=1.0)
