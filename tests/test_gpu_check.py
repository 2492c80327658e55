"""scripts/gpu_check.py: its CPU dry run, its comparison with the CPU reference, and its refusal without CUDA."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("gpu_check", None)


class _Line:
    """y = x @ w + noise on 64 fixed points: a BatchSource any model of the right shape can learn."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.01 * torch.randn(64, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices, device="cpu"):
        return self.x[indices].to(device), self.y[indices].to(device)


def _ctx(gpu_check, tmp_path):
    from dataclasses import replace

    return gpu_check.Context(replace(gpu_check.Settings().dry_run(), batch_size=64, lr=0.05), True, tmp_path)


def test_cpu_comparison_passes_a_matching_run_and_fails_a_diverging_one(gpu_check, tmp_path):
    """The device run (here also the CPU) must fall and agree with the fp32 reference on the window mean;
    a device run whose loss is off by 2x, or one that does not learn, fails with the reason flagged."""
    data = _Line()
    calls = []

    def make(scale_first: float = 1.0, lr0: bool = False):
        def f():
            calls.append(1)
            torch.manual_seed(0)
            model = torch.nn.Linear(3, 1)
            if lr0 and len(calls) % 2 == 1:
                model.requires_grad_(False)
                model.bias.requires_grad_(True)
                model.bias.register_hook(lambda g: g * 0)
            k = scale_first if len(calls) % 2 == 1 else 1.0
            return model, (lambda m, x, y: k * torch.nn.functional.mse_loss(m(x), y)), data
        return f

    ctx = _ctx(gpu_check, tmp_path)
    good = gpu_check.compare_to_cpu("toy", ctx, make(), 40, 20)
    assert good["ok"] and good["loss_falls"] and good["matches_cpu"]
    assert good["device_window_loss"] == good["cpu_window_loss"] and good["window"] == [16, 20]
    off = gpu_check.compare_to_cpu("toy", ctx, make(scale_first=2.0), 40, 20)
    assert not off["ok"] and off["loss_falls"] and not off["matches_cpu"]
    stuck = gpu_check.compare_to_cpu("toy", ctx, make(lr0=True), 40, 20)
    assert not stuck["ok"] and not stuck["loss_falls"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_and_points_to_the_dry_run(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--cpu-dry-run" in err
    assert not (tmp_path / "s.json").exists()
    assert gpu_check.main(["--cpu-dry-run", "--checks", "predict,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def _dry_run(tmp_path: Path, *extra: str, may_fail: tuple[str, ...] = ()) -> dict:
    out = tmp_path / "summary.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-dry-run", "--out", str(out), "--work",
                           str(tmp_path / "work"), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    summary = json.loads(out.read_text())
    assert all(c["ok"] for n, c in summary["checks"].items() if n not in may_fail), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == (0 if summary["ok"] else 1)
    assert summary["finished"] and summary["dry_run"] and summary["device"] == "cpu"
    assert json.loads(proc.stdout[proc.stdout.rindex("\n{"):]) == summary
    assert "| check | steps |" in summary["markdown"]
    return summary


def test_cpu_dry_run_of_training_and_throughput(tmp_path):
    """The default-suite variant: training checks against the CPU reference and the throughput table."""
    s = _dry_run(tmp_path, "--checks", "predict,throughput")
    assert set(s["checks"]) == {"zoos", "predict", "throughput"}
    p = s["checks"]["predict"]
    assert p["loss_falls"] and p["matches_cpu"] and p["loss_last_20pct"] < p["loss_first_10pct"]
    rows = s["checks"]["throughput"]["rows"]
    assert {r["family"] for r in rows} == {"MLP", "CNN", "GPT"}
    assert all(r["infer_graphs_per_s"] > 0 and r["train_graphs_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_cpu_dry_run_runs_every_check(tmp_path):
    s = _dry_run(tmp_path, may_fail=("hyper",))
    assert set(s["checks"]) == {"zoos", "predict", "nowcast", "hyper", "ddp", "throughput"}
    d = s["checks"]["ddp"]
    assert d["backend"] == "gloo" and d["replicas_identical"] and d["loss_falls"] and not d["fallback"]
    assert s["checks"]["nowcast"]["matches_cpu"]
    assert s["checks"]["hyper"]["matches_cpu"]  # 24 dry-run steps are too few for the hypernetwork's loss to fall 10%
