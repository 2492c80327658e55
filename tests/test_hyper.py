"""Graph hypernetwork: complete state_dicts for every family, equivariance, seeds, BN calibration, training."""
import json

import pytest
import torch
import torch.nn as nn

from families import CNN, MLP, families
from weightspace import WeightSpace
from weightspace.errors import UnsupportedOperation
from weightspace.hyper import (ArchDistribution, BadExampleInput, GraphHyperNetwork, HyperTrainSpec,
                               NonFinitePrediction, evaluate_architectures, train_hypernetwork)
from weightspace.tasks import digits_split
from weightspace.training import TrainConfig

FAMILIES = families()
PACKAGED_MIN_GAIN = 0.6
"""Mean accuracy gain over default init the packaged model must give on a held-out digits MLP (two seeds; the
retrained model gives 0.95 zero-shot on MLP 64-40x3-10 against 0.11 for default init)."""


def tiny(parametrization: str = "mip", seed: int = 0) -> GraphHyperNetwork:
    torch.manual_seed(seed)
    return GraphHyperNetwork(hidden=16, layers=2, unit_features=4, rank=4, parametrization=parametrization)


@pytest.fixture(scope="module")
def trained_for_tests() -> GraphHyperNetwork:
    """A hypernetwork with non-zero heads (MIP starts its heads at zero), so predictions depend on every input."""
    h = tiny("ghn2")
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return h.eval()


@pytest.mark.parametrize("parametrization", ["mip", "ghn2"])
@pytest.mark.parametrize("name,make,example", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_predicted_state_dict_is_complete_and_runs(name, make, example, parametrization):
    torch.manual_seed(0)
    model, x = make(), example()
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    sd = tiny(parametrization).predict(model, x, seed=3)
    assert list(sd) == list(ref)
    for k in ref:
        assert sd[k].shape == ref[k].shape and sd[k].dtype == ref[k].dtype, k
        if sd[k].is_floating_point():
            assert bool(torch.isfinite(sd[k]).all()), k
    model.load_state_dict(sd)
    out = model.eval()(x)
    assert bool(torch.isfinite(out).all())


def test_batchnorm_statistics_make_eval_mode_match_train_mode_on_the_calibration_batch(trained_for_tests):
    torch.manual_seed(0)
    model = CNN(c=(4, 6, 5))
    x = torch.rand(64, 1, 8, 8)
    sd = trained_for_tests.predict(model, x[:2], seed=1, calibration=x)
    model.load_state_dict(sd)
    assert not torch.equal(sd["b1.running_mean"], torch.zeros(4))
    assert int(sd["b1.num_batches_tracked"]) == 0
    eval_out = model.eval()(x)
    train_out = model.train()(x)
    torch.testing.assert_close(eval_out, train_out, rtol=0.02, atol=0.02)


def test_permuting_the_unit_features_permutes_the_prediction(trained_for_tests):
    torch.manual_seed(0)
    for name, make, example in [FAMILIES[0], FAMILIES[4], FAMILIES[5]]:
        model, x = make(), example()
        space = WeightSpace.from_module(model, x)
        lay = trained_for_tests.layout(space)
        draw = trained_for_tests.draw(lay, seed=5)
        perm = space.random_permutation(torch.Generator().manual_seed(1))
        pred = trained_for_tests.predict(model, x, draw=draw, calibration=x)
        permuted_pred = trained_for_tests.predict(model, x, draw=draw.permuted(lay, perm), calibration=x)
        expected = space.permute(pred, perm)
        assert any(not torch.allclose(expected[k], pred[k]) for k in pred if pred[k].is_floating_point()), name
        for k in pred:
            torch.testing.assert_close(permuted_pred[k], expected[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")


def test_seeds_generate_different_models_and_the_same_seed_the_same(trained_for_tests):
    model, x = MLP(), torch.randn(5, 6)
    a = trained_for_tests.predict(model, x, seed=0)
    b = trained_for_tests.predict(model, x, seed=0)
    c = trained_for_tests.predict(model, x, seed=1)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.allclose(a["net.0.weight"], c["net.0.weight"])
    # interchangeable hidden units get different weights
    w = a["net.0.weight"]
    assert float((w[:, None] - w[None]).abs().sum(-1).masked_fill(torch.eye(8, dtype=torch.bool), 1).min()) > 1e-3


def test_units_are_told_apart_by_their_relative_position_at_any_width():
    from weightspace.errors import WeightSpaceError
    from weightspace.hyper.layout import position_code
    from weightspace.tasks import build

    plain, noisy = tiny(), GraphHyperNetwork(hidden=16, layers=0, unit_features=4, rank=4, unit_noise=0.5)
    for width in (3, 24, 200):
        model = build("mlp", seed=0, in_features=64, widths=[width, width], out_features=10)
        lay = plain.layout(WeightSpace.from_module(model, torch.rand(2, 64)))
        hidden = lay.permutable_nodes
        assert int(hidden.sum()) == 2 * width
        u = torch.cat([(torch.arange(width) + 0.5) / width] * 2)
        a, b = plain.draw(lay, seed=0), plain.draw(lay, seed=1)
        torch.testing.assert_close(a.units[hidden], position_code(u, 4))
        assert torch.equal(a.units, b.units) and not torch.equal(a.theta0, b.theta0)
        assert bool((a.units[~hidden] == 0).all())
        codes = a.units[hidden][:width]
        gaps = (codes[:, None] - codes[None]).norm(dim=-1) + torch.eye(width)
        assert float(gaps.min()) > 0, width  # no two units of a layer share features (no tiling)
        n0, n1 = noisy.draw(lay, seed=0), noisy.draw(lay, seed=1)
        assert not torch.equal(n0.units[hidden], n1.units[hidden])
        assert 0.3 < float((n0.units[hidden] - a.units[hidden]).std()) < 0.7
    with pytest.raises(WeightSpaceError, match="unit_noise"):
        GraphHyperNetwork(positional=False, unit_noise=0.0)


def test_init_writes_the_prediction_in_place(trained_for_tests):
    model, x = MLP(), torch.randn(5, 6)
    sd = trained_for_tests.predict(model, x, seed=2)
    assert trained_for_tests.init_(model, x, seed=2) is model
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])


def test_save_and_load_round_trip_gives_the_same_predictions(tmp_path, trained_for_tests):
    trained_for_tests.save_pretrained(tmp_path / "h")
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    assert config["parametrization"] == "ghn2" and config["unit_features"] == 4
    loaded = GraphHyperNetwork.from_pretrained(tmp_path / "h")
    model, x = CNN(), torch.rand(3, 1, 8, 8)
    a, b = trained_for_tests.predict(model, x, seed=4), loaded.predict(model, x, seed=4)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_inputs_get_named_errors(trained_for_tests):
    model = MLP()
    with pytest.raises(BadExampleInput, match=r"example input \(5, 7\) does not fit MLP"):
        trained_for_tests.predict(model, torch.randn(5, 7))

    class Refused(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.fft.fft(self.lin(x)).real

    with pytest.raises(UnsupportedOperation):
        trained_for_tests.predict(Refused(), torch.randn(2, 4))

    h = tiny("ghn2")  # a poisoned copy, so the shared fixture stays intact
    h.load_state_dict(trained_for_tests.state_dict())
    with torch.no_grad():
        h.edge_head.mlp[-1].bias[0] = float("nan")
    with pytest.raises(NonFinitePrediction, match="net.0.weight"):
        h.predict(model, torch.randn(5, 6))


TINY_DIST = ArchDistribution(families=("mlp",), mlp_widths=(16, 32), mlp_depths=(1,), activations=("relu",))
HELD_OUT = ({"family": "mlp", "in_features": 64, "widths": [24], "out_features": 10, "activation": "relu"},)


def tiny_config(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "batch_size": 2, "lr": 3e-3, "warmup": 2, "progress": False,
                          "checkpoint_every": 2, "log_every": 1, "eval_every": 0, "device": "cpu", **kw})


def test_resumed_training_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    spec = HyperTrainSpec(TINY_DIST, data_batch=16)
    full, _ = train_hypernetwork(tmp_path / "full", tiny_config(), spec, tiny())
    train_hypernetwork(tmp_path / "cut", tiny_config(), spec, tiny(), stop_at=3)
    assert json.loads((tmp_path / "cut" / "latest.json").read_text())["step"] == 2
    resumed, res = train_hypernetwork(tmp_path / "cut", tiny_config(), spec, tiny(seed=123))
    assert res.step == 6
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert (tmp_path / "cut" / "loss.png").exists() and (tmp_path / "cut" / "model" / "config.json").exists()
    assert any(not torch.equal(v, tiny().state_dict()[k]) for k, v in full.state_dict().items())


def test_training_steps_run_on_cnns_with_batchnorm_and_evaluate_held_out_architectures():
    torch.set_num_threads(1)
    dist = ArchDistribution(families=("mlp", "cnn"), mlp_widths=(8,), mlp_depths=(1, 2), cnn_channels=(4,),
                            cnn_batchnorm=(True, False))
    held = ({"family": "cnn", "channels": [6, 6, 6], "batchnorm": True, "in_channels": 1, "num_classes": 10,
             "activation": "relu"},)
    _, result = train_hypernetwork(None, tiny_config(steps=4, batch_size=4, checkpoint_every=0, eval_every=2),
                                   HyperTrainSpec(dist, 16, held), hidden=8, layers=1, unit_features=2)
    assert [h["step"] for h in result.history if "eval_acc" in h] == [2, 4]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def trained_accuracy(steps: int, lr: float) -> tuple[float, float, list[dict]]:
    """Held-out-width accuracy of a hypernetwork trained ``steps`` steps on digits MLPs, and default init's."""
    torch.set_num_threads(1)
    spec = HyperTrainSpec(TINY_DIST, data_batch=64)
    size = {"hidden": 16, "layers": 1, "unit_features": 8, "rank": 32}
    hyper, result = train_hypernetwork(None, tiny_config(steps=steps, lr=lr, warmup=10, checkpoint_every=0,
                                                         log_every=20), spec, **size)
    data = digits_split(0)
    acc = evaluate_architectures(hyper, HELD_OUT, data, seeds=(0, 1, 2))["eval_acc"]
    default = GraphHyperNetwork(**size)  # MIP at init: an ordinary random init
    base = evaluate_architectures(default, HELD_OUT, data, seeds=(0, 1, 2))["eval_acc"]
    print(f"held-out width 24 after {steps} steps: predicted {acc:.3f} vs default init {base:.3f}")
    return acc, base, result.history


def test_a_short_training_beats_default_init_on_a_held_out_width():
    acc, base, history = trained_accuracy(100, 1e-2)
    assert history[-1]["loss"] < history[0]["loss"]
    assert acc > base + 0.05, (acc, base)


@pytest.mark.slow
def test_training_on_a_tiny_task_beats_default_init_clearly():
    acc, base, history = trained_accuracy(200, 5e-3)
    assert history[-1]["loss"] < history[0]["loss"]
    assert acc > base + 0.15, (acc, base)


def test_cli_trains_and_predicts_a_state_dict_with_its_weight_space(tmp_path, capsys):
    from safetensors.torch import load_file

    from weightspace.cli import main
    from weightspace.tasks import build, example_input

    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert main(["hyper", "train", "--out", str(out), "--families", "mlp", "--mlp-widths", "8", "--mlp-depths", "1",
                 "--hidden", "8", "--layers", "1", "--unit-features", "2", "--unit-noise", "0.25", "--data-batch", "8",
                 "--steps", "2",
                 "--batch-size", "1", "--device", "cpu", "--no-progress", "--checkpoint-every", "1"]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["unit_noise"] == 0.25 and config["positional"] and config["layers"] == 1
    target = tmp_path / "pred" / "mlp.safetensors"
    assert main(["hyper", "predict", "--model", str(out / "model"), "--arch",
                 '{"family": "mlp", "widths": [12, 12]}', "--out", str(target), "--device", "cpu"]) == 0
    sd = load_file(str(target))
    model = build("mlp", widths=[12, 12])
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in model.state_dict().items()}
    space = WeightSpace.load(target.parent / "weightspace.json")
    assert space == WeightSpace.from_module(model, example_input(model))
    assert main(["hyper", "predict", "--model", str(out / "model"), "--arch", '{"widths": [4]}',
                 "--out", str(target)]) == 2
    assert "family" in capsys.readouterr().err


def test_a_family_training_never_saw_is_refused_by_name_unless_asked():
    from weightspace.hyper import UnseenArchitecture
    from weightspace.tasks import build, example_input

    h = tiny("ghn2")
    h.record_seen(*h.types_of(WeightSpace.from_module(MLP(), torch.randn(2, 6))))
    model, x = CNN(), torch.rand(3, 1, 8, 8)
    with pytest.raises(UnseenArchitecture, match=r"CNN|conv") as err:
        h.predict(model, x)
    assert "allow_unseen" in str(err.value)
    unseen = set(h.types_of(WeightSpace.from_module(model, x))[0]) - set(h.edge_types)
    assert unseen and all(t in str(err.value) for t in unseen)
    sd = h.predict(model, x, allow_unseen=True)
    assert set(sd) == set(model.state_dict())
    gpt = build("gpt", vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
    with pytest.raises(UnseenArchitecture, match="never trained on"):
        h.predict(gpt, example_input(gpt))
    h.predict(MLP(), torch.randn(2, 6))  # what it saw still works


def test_training_records_the_distributions_layer_types(tmp_path):
    from weightspace.hyper import UnseenArchitecture

    torch.set_num_threads(1)
    h, _ = train_hypernetwork(tmp_path / "r", tiny_config(steps=1, checkpoint_every=0), HyperTrainSpec(TINY_DIST, 8),
                              tiny())
    loaded = GraphHyperNetwork.from_pretrained(tmp_path / "r" / "model")
    assert loaded.edge_types == h.edge_types and loaded.edge_types
    with pytest.raises(UnseenArchitecture):
        loaded.predict(CNN(), torch.rand(2, 1, 8, 8))


def test_fan_in_scaling_divides_ghn2_weights_by_the_square_root_of_fan_in(trained_for_tests):
    h = GraphHyperNetwork(**{**trained_for_tests._hub_mixin_config, "fan_in_scaling": False})
    h.load_state_dict(trained_for_tests.state_dict())
    model, x = MLP(sizes=(6, 8, 7, 3)), torch.randn(4, 6)
    a, b = trained_for_tests.predict(model, x, seed=1), h.predict(model, x, seed=1)
    for k, fan_in in (("net.0.weight", 6), ("net.2.weight", 8), ("net.4.weight", 7)):
        torch.testing.assert_close(a[k] * fan_in ** 0.5, b[k], msg=k)


def test_the_tile_decoder_repeats_channels_beyond_its_tile():
    torch.manual_seed(0)
    h = GraphHyperNetwork(hidden=8, layers=1, unit_features=2, parametrization="ghn2", decoder="tile", tile=4)
    model, x = MLP(sizes=(6, 10, 3)), torch.randn(2, 6)
    w = h.predict(model, x)["net.0.weight"]  # [10, 6]
    torch.testing.assert_close(w[4:8], w[0:4])
    torch.testing.assert_close(w[:, 4:6], w[:, 0:2])
    assert not torch.allclose(w[0], w[1])
    edge = GraphHyperNetwork(hidden=8, layers=1, unit_features=2, parametrization="ghn2")
    we = edge.predict(model, x)["net.0.weight"]
    assert not torch.allclose(we[4:8], we[0:4])


class FlatInputCNN(nn.Module):
    """A CNN written to take flat 64-vectors, reshaping them inside its forward."""

    def __init__(self, flat: bool = True):
        super().__init__()
        self.flat = flat
        self.conv = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        return self.head(self.conv(x.view(-1, 1, 8, 8) if self.flat else x).mean((2, 3)))


def test_the_packaged_model_serves_digits_models_written_any_way():
    from weightspace.hyper import UnseenArchitecture
    from weightspace.tasks import build, example_input

    torch.set_num_threads(1)
    hyper = GraphHyperNetwork.from_pretrained()
    assert hyper.edge_types and "conv" in hyper.edge_types
    data = digits_split(0)
    gains = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build("mlp", widths=[48])
        default = float((model.eval()(data.x_val.flatten(1)).argmax(1) == data.y_val).float().mean())
        hyper.init_(model, data.x_train[:256].flatten(1), seed=seed)
        gains.append(float((model.eval()(data.x_val.flatten(1)).argmax(1) == data.y_val).float().mean()) - default)
    assert sum(gains) / 2 > PACKAGED_MIN_GAIN, gains
    flat = hyper.predict(FlatInputCNN(), data.x_train[:256].flatten(1), seed=3)
    image = hyper.predict(FlatInputCNN(flat=False), data.x_train[:256], seed=3)
    for k in image:
        assert torch.equal(flat[k], image[k]), k
    cnn = build("cnn", channels=[12, 12, 12], batchnorm=True)
    hyper.init_(cnn, data.x_train[:256], seed=0)
    assert bool(torch.isfinite(cnn.eval()(data.x_val)).all())
    gpt = build("gpt", vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=8)
    with pytest.raises(UnseenArchitecture, match="embedding"):
        hyper.predict(gpt, example_input(gpt))


def test_training_runs_on_tiny_gpts_with_the_language_modelling_loss():
    import math

    from weightspace.hyper import UnseenArchitecture

    torch.set_num_threads(1)
    dist = ArchDistribution(families=("gpt",), gpt_widths=(8,), gpt_depths=(1,), gpt_heads=(2,),
                            gpt_attention=("separate", "fused"), gpt_block_size=8)
    h, result = train_hypernetwork(None, tiny_config(steps=2, batch_size=2, checkpoint_every=0),
                                   HyperTrainSpec(dist, 8), hidden=8, layers=1, unit_features=2)
    first = result.history[0]["loss"]
    assert abs(first - math.log(97)) < 0.5, first  # a near-uniform next-character distribution at MIP's start
    assert {"embedding", "attn_qk"} <= set(h.edge_types)
    with pytest.raises(UnseenArchitecture, match="input"):
        h.predict(MLP(), torch.randn(2, 6))
