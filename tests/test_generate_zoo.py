"""p-diff's zoo recipe, the hypernetwork generator on a collection, and the ``weightspace generate`` command."""
import pytest
import torch

from weightspace.cli import main
from weightspace.collections import CheckpointCollection
from weightspace.generate import GeneratorError, HyperGenerator
from weightspace.memorization import MemorizationError, load_training
from weightspace.tasks.zoo import RECIPES, build_zoo
from weightspace.training import TrainConfig


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo("pdiff-cnn", tmp_path_factory.mktemp("zoo") / "pdiff-cnn", size="tiny", progress=False)


def test_pdiff_recipe_trains_only_the_chosen_layers_and_saves_every_step(zoo):
    size = RECIPES["pdiff-cnn"].sizes["tiny"]
    run = zoo.runs()[0]
    steps = zoo.steps(run)
    tail = list(range(size.steps + 1, size.steps + size.tail + 1))
    assert steps[-len(tail):] == tail and len(steps) == size.checkpoints_per_run
    rows = {r["step"]: r for r in zoo.rows() if r["run_id"] == run}
    assert [rows[s]["finetuning"] for s in steps] == [0.0] * (len(steps) - len(tail)) + [1.0] * len(tail)
    base = zoo.load(run, size.steps)
    chosen = {k for k in base if k.split(".")[1] in ("1", "5", "8") and "num_batches" not in k}
    for s in tail:
        sd = zoo.load(run, s)
        for k in base:
            assert torch.equal(sd[k], base[k]) == (k not in chosen), (s, k)
        base = sd


def test_cli_checkpoint_choices_are_the_librarys():
    """The generate and memorization commands list load_training's checkpoint choices literally (importing the
    memorization package would slow every command's start-up by ~0.7 s); this keeps the three lists equal."""
    import argparse

    from weightspace.cli import build_parser
    from weightspace.memorization.training import STEPS

    def choices(*path):
        parser = build_parser()
        for name in path[:-1]:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[name]
        return tuple(next(a for a in parser._actions if path[-1] in a.option_strings).choices)
    assert choices("generate", "fit", "--checkpoints") == STEPS
    assert choices("memorization", "report", "--steps") == STEPS


def test_tail_checkpoints_are_the_recipes_last_phase(zoo):
    size = RECIPES["pdiff-cnn"].sizes["tiny"]
    tail = load_training(zoo, steps="tail")
    assert len(tail.models) == len(zoo.runs()) * size.tail
    assert all(r["finetuning"] == 1.0 and r["step"] > size.steps for r in tail.rows)
    assert len(load_training(zoo, steps="last").models) == len(zoo.runs())
    with pytest.raises(MemorizationError, match="'last', 'all', 'tail', got 'tial'"):
        load_training(zoo, steps="tial")


def test_report_on_a_recipe_collection_builds_the_recipes_model_for_data(zoo):
    from weightspace.memorization import report
    run = zoo.runs()[0]
    rep = report(None, [zoo.load(run, zoo.steps(run)[-1])], zoo, data="digits", baselines=())
    acc = rep.group("generated").behaviour["accuracy"]
    assert acc.shape == (1,) and float(acc[0]) == float(rep.groups[0].behaviour["accuracy"][0])


def test_hypernetwork_generator_samples_complete_models_and_round_trips(zoo, tmp_path):
    gen = HyperGenerator.fit(zoo, config=TrainConfig(steps=3, batch_size=1, checkpoint_every=0, eval_every=0,
                                                     progress=False, plot=False, warmup=1), hidden=8, layers=1)
    space = zoo.space(zoo.architectures()[0])
    a = gen.sample(2, seed=4)
    for sd in a:
        assert list(sd) == list(space.keys)
        assert all(tuple(v.shape) == space.params[k].shape and bool(torch.isfinite(v.float()).all())
                   for k, v in sd.items())
    assert not torch.equal(a[0]["features.0.weight"], a[1]["features.0.weight"])
    gen.save_pretrained(tmp_path / "g")
    b = HyperGenerator.from_pretrained(tmp_path / "g").sample(2, seed=4)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    with pytest.raises(GeneratorError, match="equal channels"):
        HyperGenerator.fit(zoo, arch={"family": "cnn", "channels": [4, 8, 8], "batchnorm": True, "in_channels": 1,
                                      "num_classes": 10, "activation": "relu"})


def test_cli_fits_samples_and_reports(zoo, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "fit", "--method", "pdiff", "--train", str(zoo.root), "--out", str(out),
                 "--checkpoints", "tail", "--keys", "norm", "--steps", "20", "--batch-size", "8", "--hidden", "16",
                 "--diffusion-steps", "10", "--no-progress", "--checkpoint-every", "10"]) == 0
    assert (out / "model" / "config.json").exists() and (out / "diffusion" / "loss.png").exists()
    samples = tmp_path / "samples"
    assert main(["generate", "sample", "--model", str(out / "model"), "--n", "3", "--out", str(samples)]) == 0
    assert len(list(samples.glob("*.safetensors"))) == 3
    assert main(["memorization", "report", "--generated", str(samples), "--train", str(zoo.root), "--out",
                 str(tmp_path / "rep"), "--baselines", "noise", "--quiet"]) == 0
    assert (tmp_path / "rep" / "report.json").exists()
    assert main(["generate", "fit", "--method", "graph-diffusion", "--train", str(zoo.root), "--out",
                 str(tmp_path / "x"), "--keys", "norm"]) == 2
    assert "only apply to --method pdiff" in capsys.readouterr().err


def test_hypernetwork_generator_beats_chance_after_meta_training(zoo):
    """300 meta-training steps on the CNN of the zoo: its samples beat chance (0.1) on digits (measured 0.31)."""
    from weightspace.memorization import Evaluator

    gen = HyperGenerator.fit(zoo, config=TrainConfig(steps=300, batch_size=2, lr=3e-3, warmup=20, checkpoint_every=0,
                                                     eval_every=0, progress=False, plot=False), hidden=32, layers=2)
    ev = Evaluator(gen.space, "digits", model=gen.model)
    accs = torch.tensor([float((lambda p: (p[0] == p[1]).float().mean())(ev.predict(sd))) for sd in gen.sample(4)])
    assert accs.median() > 0.2, accs
