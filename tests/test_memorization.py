"""weightspace.memorization: nearest distances modulo permutations, spread, baselines, behaviour, report, CLI."""
import json
import math

import matplotlib
import pytest
import torch
from safetensors.torch import save_file

from weightspace import StateDictMismatch, WeightSpace
from weightspace.cli import main
from weightspace.collections import CheckpointCollection
from weightspace.memorization import (MemorizationError, ModelSet, NearestIndex, Pool, aligned_distance, decide,
                                      make_baseline, nearest, report, spread)
from weightspace.tasks import build, digits_split, train_classifier

WIDTH = 12


def _config(seed):
    return {"recipe": "digits-mlp", "family": "mlp", "in_features": 64, "widths": [WIDTH], "out_features": 10,
            "activation": "relu", "seed": seed}


def _clone(sd):
    return {k: v.detach().clone() for k, v in sd.items()}


@pytest.fixture(scope="module")
def zoo():
    """Six digits MLPs, independently initialised and briefly trained: four train, two held out."""
    torch.manual_seed(0)
    data = digits_split(flat=True)
    sds = []
    for seed in range(6):
        m = build("mlp", seed=seed, in_features=64, widths=[WIDTH], out_features=10)
        train_classifier(m, data, 40, lr=1e-2, seed=seed)
        sds.append(_clone(m.state_dict()))
    space = WeightSpace.from_module(m, data.x_val[:2])
    return {"space": space, "train": sds[:4], "held_out": sds[4:], "model": m, "data": (data.x_val, data.y_val)}


def _permuted(space, sd, seed):
    return space.permute(sd, space.random_permutation(torch.Generator().manual_seed(seed)))


def test_permuted_copy_is_found_at_aligned_distance_zero_and_flagged_as_copy(zoo):
    space, train = zoo["space"], zoo["train"]
    copies = [_permuted(space, train[2], 1), _permuted(space, train[0], 2)]
    res = nearest(space, copies, train)
    assert res.indices.tolist() == [2, 0]
    assert res.distances.max() < 1e-5
    raw = nearest(space, copies, train, aligned=False)
    sp = spread(space, train).median()
    assert raw.distances.min() > 0.5 * sp
    rep = report(space, {"copies": copies, "one copy": [copies[0], *zoo["held_out"]]}, train, baselines=())
    assert rep.verdicts["copies"] == "copies"
    assert rep.group("copies").raw.median() > 0.5 * rep.spread_aligned
    # the median verdict misses one copy among three models; the count does not
    assert rep.verdicts["one copy"] != "copies"
    summary = rep.to_json()["groups"]
    assert {g["summary"]["name"]: g["summary"]["copies"] for g in summary if g["summary"]["kind"] == "generated"} \
        == {"copies": 2, "one copy": 1}
    assert "| NaN excluded | copies |" in rep.markdown()


def test_report_excludes_same_run_models_from_spread_and_similarity(zoo):
    """With exclude_same_run, a training model's nearest model and most similar model are never of its own run."""
    space, train = zoo["space"], zoo["train"]
    models = train + [_permuted(space, sd, 7) for sd in train]
    runs = ["a", "b", "c", "d"] * 2
    kw = dict(data=zoo["data"], model=zoo["model"], baselines=())
    plain = report(space, {"g": zoo["held_out"]}, ModelSet.build(space, models, "training model"), **kw)
    assert plain.spread_aligned < 1e-4
    from weightspace.memorization import load_training
    rep = report(space, {"g": zoo["held_out"]}, load_training(models, space, groups=runs), exclude_same_run=True,
                 **kw)
    t = rep.groups[0]
    assert rep.spread_aligned > 1e-3
    for i, run in enumerate(runs):
        assert runs[int(t.aligned.indices[i])] != run
        assert runs[int(t.behaviour["max_similarity_index"][i])] != run


def test_independently_trained_models_are_not_flagged(zoo):
    space, train = zoo["space"], zoo["train"]
    rep = report(space, {"independent": zoo["held_out"]}, train, data=zoo["data"], model=zoo["model"],
                 baselines={"noise": [{"scale": 0.05}, {"scale": 0.5}], "average": [{"k": 2, "aligned": True}]})
    g = rep.group("independent")
    assert g.verdict in ("interpolates", "novel")
    assert g.aligned.distances.min() > rep.config["copy_fraction"] * rep.spread_aligned
    # alignment brings them closer, but they stay about as far as training models are from each other
    assert (g.aligned.distances <= g.raw.distances + 1e-6).all()
    assert g.aligned.median() > 0.5 * rep.spread_aligned


def test_baselines_order_noise_to_zero_gives_copies(zoo):
    space, train = zoo["space"], zoo["train"]
    index = NearestIndex(ModelSet.build(space, train, "training model"), k=4)
    pool = Pool(index.training, index.base)
    threshold = 0.1 * index.spread().median()
    medians = []
    for sigma in (1e-6, 1e-3, 1e-2, 1e-1):
        sds = make_baseline("noise", pool, 4, seed=0, sigma=sigma)
        medians.append(index.query(ModelSet.build(space, sds, "noise")).median())
    assert medians[0] < 1e-3 and medians[0] < threshold
    assert medians == sorted(medians) and medians[-1] > 10 * medians[1]
    # seeded: the same seed gives the same models, another seed other ones
    a, b = (make_baseline("gaussian", pool, 2, seed=s) for s in (3, 3))
    c = make_baseline("gaussian", pool, 2, seed=4)
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and not torch.equal(a[0]["net.0.weight"],
                                                                                 c[0]["net.0.weight"])
    # aligned averages stay closer to the training models than raw averages
    al = index.query(ModelSet.build(space, make_baseline("average", pool, 6, k=2, aligned=True), "avg")).median()
    raw = index.query(ModelSet.build(space, make_baseline("average", pool, 6, k=2, aligned=False), "avg")).median()
    assert al < raw


def test_chunked_cdist_and_refine_equal_brute_force(zoo):
    space = zoo["space"]
    g = torch.Generator().manual_seed(0)
    train = zoo["train"] + [_permuted(space, zoo["held_out"][0], 5)]
    queries = [{k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in _permuted(space, sd, 10 + i).items()}
               for i, sd in enumerate(train)] + [zoo["held_out"][1]]
    brute = torch.tensor([[aligned_distance(space, q, t) for t in train] for q in queries], dtype=torch.float64)
    res = nearest(space, queries, train, k=len(train), chunk_size=2)
    assert res.indices.tolist() == brute.argmin(1).tolist()
    assert torch.allclose(res.distances, brute.min(1).values, rtol=0, atol=1e-9)
    # with fewer candidates than training models, the canonical ranking still finds the source of each
    # noisy permuted copy (the held-out model's nearest may then be missed: k bounds the search)
    res = nearest(space, queries[:-1], train, k=2, chunk_size=3)
    assert res.indices.tolist() == brute[:-1].argmin(1).tolist()
    assert torch.allclose(res.distances, brute[:-1].min(1).values, rtol=0, atol=1e-9)
    # the spread: each training model's nearest other one, by brute force
    tb = torch.tensor([[aligned_distance(space, a, b) if i != j else math.inf for j, b in enumerate(train)]
                       for i, a in enumerate(train)], dtype=torch.float64)
    sp = spread(space, train, k=len(train), chunk_size=2)
    assert sp.indices.tolist() == tb.argmin(1).tolist()
    assert torch.allclose(sp.distances, tb.min(1).values, rtol=0, atol=1e-9)
    # excluding the same run: models 0 and 1 share a run, so neither may be the other's nearest
    runs = ["a", "a", "b", "c", "d"]
    sx = spread(space, train, groups=runs, exclude_same_run=True, k=len(train))
    for i in range(len(train)):
        allowed = [j for j in range(len(train)) if runs[j] != runs[i]]
        assert sx.indices[i] == min(allowed, key=lambda j: tb[i, j])


def test_report_writes_files_and_verdict_follows_rule(zoo, tmp_path):
    space, train = zoo["space"], zoo["train"]
    backend = matplotlib.get_backend()
    rep = report(space, {"copies": [_permuted(space, train[1], 3)], "independent": zoo["held_out"]}, train,
                 data=zoo["data"], model=zoo["model"], samples=2,
                 baselines={"noise": [{"scale": 0.01}, {"scale": 0.5}], "average": [{"k": 2, "aligned": False}],
                            "gaussian": [{}]})
    rep.save(tmp_path / "rep")
    assert matplotlib.get_backend() == backend
    for name in ("report.json", "report.md", "scatter.png", "distances.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert (tmp_path / "rep" / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    j = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert "0.1 x the training set's median aligned spread" in j["rule"]
    summaries = {g["summary"]["name"]: g["summary"] for g in j["groups"]}
    front = [(s["median_accuracy"], 1 - s["median_max_similarity"]) for s in summaries.values()
             if s["kind"] == "baseline"]
    assert len(front) == 4
    for name in ("copies", "independent"):
        s = summaries[name]
        if s["relative_aligned"] < 0.1:
            expected = "copies"
        elif any(a >= s["median_accuracy"] and n >= 1 - s["median_max_similarity"] for a, n in front):
            expected = "interpolates"
        else:
            expected = "novel"
        assert j["verdicts"][name] == expected == s["verdict"]
    assert j["verdicts"]["copies"] == "copies"
    assert summaries["copies"]["median_max_similarity"] == 1.0 and summaries["copies"]["median_agreement"] == 1.0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| copies | generated | 1 | 0 |" in md and "**Rule.**" in md


def test_decide_gives_each_verdict_by_the_stated_rule(zoo):
    space, train = zoo["space"], zoo["train"]
    rep = report(space, {"g": zoo["held_out"]}, train, data=zoo["data"], model=zoo["model"], baselines=())
    g = rep.group("g")
    acc = float(g.behaviour["accuracy"].median())
    nov = 1 - float(g.behaviour["max_similarity"].median())
    spread_ = rep.spread_aligned
    assert decide(g, spread_, [(acc + 0.01, nov + 0.01)], 0.1, True) == "interpolates"
    assert decide(g, spread_, [(acc - 0.01, nov + 0.5)], 0.1, True) == "novel"
    assert decide(g, spread_, [(acc + 0.01, nov + 0.01)], 100.0, True) == "copies"
    assert decide(g, spread_, [], 0.1, False).startswith("undetermined")


def test_bad_inputs_are_refused_by_name(zoo):
    space, train = zoo["space"], zoo["train"]
    other = build("mlp", seed=0, in_features=64, widths=[WIDTH + 1], out_features=10).state_dict()
    with pytest.raises(StateDictMismatch, match=r"generated model 1 .*'net\.0\.weight' has shape \(13, 64\)"):
        nearest(space, [train[0], other], train)
    with pytest.raises(StateDictMismatch, match="training model 0 .*'net.0.weight'"):
        nearest(space, [train[0]], [other, train[1]])
    with pytest.raises(MemorizationError, match="1 usable model"):
        nearest(space, [train[0]], train[:1])
    with pytest.raises(MemorizationError, match="1 usable model.*1 excluded for NaN"):
        nearest(space, [train[0]], [train[0], {**train[1], "net.2.bias": torch.full((10,), math.nan)}])
    with pytest.raises(MemorizationError, match="cannot run on data"):
        report(space, [train[0]], train, data=(torch.randn(5, 7), torch.zeros(5, dtype=torch.long)),
               model=zoo["model"], baselines=())
    with pytest.raises(MemorizationError, match="needs the model"):
        report(space, [train[0]], train, data="digits", baselines=())
    with pytest.raises(MemorizationError, match="unknown baseline 'nois'"):
        report(space, [train[0]], train, baselines=("nois",))
    with pytest.raises(MemorizationError, match="no parameter 'sigam'"):
        report(space, [train[0]], train, baselines={"noise": [{"sigam": 0.1}]})


def test_nan_models_are_excluded_and_counted(zoo, tmp_path):
    space, train = zoo["space"], zoo["train"]
    bad = {**train[0], "net.0.weight": train[0]["net.0.weight"].clone()}
    bad["net.0.weight"][0, 0] = math.nan
    res = nearest(space, [bad, train[1]], train)
    assert math.isnan(res.distances[0]) and res.indices[0] == -1 and res.indices[1] == 1
    assert "net.0.weight" in res.excluded[0]
    rep = report(space, [bad, train[2]], train, data=zoo["data"], model=zoo["model"], baselines=())
    rep.save(tmp_path)
    s = json.loads((tmp_path / "report.json").read_text())["groups"][1]
    assert s["summary"]["excluded"] == 1 and "NaN" in s["excluded"]["0"]
    assert s["aligned"]["distances"][0] is None and s["aligned"]["distances"][1] < 1e-9
    assert s["accuracy"][0] is None and s["accuracy"][1] > 0.5
    assert "| generated | generated | 2 | 1 |" in (tmp_path / "report.md").read_text()


def test_cli_report_on_a_tiny_collection(zoo, tmp_path, capsys):
    space, train = zoo["space"], zoo["train"]
    coll = CheckpointCollection.create(tmp_path / "zoo")
    for i, sd in enumerate(train):
        with coll.run_writer(f"mlp-{i:04d}", space=space, hparams=_config(i)) as w:
            w.append(0, sd)
    gen = tmp_path / "gen"
    gen.mkdir()
    save_file(_clone(_permuted(space, train[3], 7)), str(gen / "a.safetensors"))
    save_file(_clone(zoo["held_out"][0]), str(gen / "b.safetensors"))
    out = tmp_path / "out"
    assert main(["memorization", "report", "--generated", str(gen), "--train", str(coll.root), "--data", "digits",
                 "--out", str(out), "--samples", "2", "--baselines", "noise,average", "--quiet"]) == 0
    j = json.loads((out / "report.json").read_text())
    g = next(x for x in j["groups"] if x["summary"]["name"] == "gen")
    assert g["aligned"]["indices"][0] == 3 and g["aligned"]["distances"][0] < 1e-5
    assert g["aligned"]["distances"][1] > 0.1 * j["spread"]["median_aligned"]
    assert j["config"]["data"] == "digits" and (out / "scatter.png").exists()
    assert "copies" in capsys.readouterr().out
    # a generated file of another architecture is named, with its first mismatching tensor
    save_file(_clone(build("mlp", seed=0, in_features=64, widths=[5], out_features=10).state_dict()),
              str(gen / "c.safetensors"))
    assert main(["memorization", "report", "--generated", str(gen), "--train", str(coll.root), "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "c.safetensors" in err and "'net.0.weight' has shape (5, 64)" in err


def test_max_similarity_and_agreement_are_exact():
    from weightspace.memorization import accuracy, agreement, max_similarity
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    train = torch.tensor([[0, 1, 2, 3, 0, 1],     # no mistakes
                          [1, 1, 2, 3, 1, 1],     # wrong on {0, 4}
                          [1, 0, 0, 3, 0, 1],     # wrong on {0, 1, 2}
                          [-1] * 6])              # excluded model
    gen = torch.tensor([[1, 0, 2, 3, 0, 1],       # wrong on {0, 1}: IoU 1/3 with #1, 2/3 with #2
                        [0, 1, 2, 3, 0, 1],       # no mistakes: IoU 1 with #0
                        [-1] * 6])
    sim, idx = max_similarity(gen, y, train)
    assert torch.allclose(sim[:2], torch.tensor([2 / 3, 1.0], dtype=torch.float64)) and math.isnan(sim[2])
    assert idx.tolist() == [2, 0, -1]
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 2] = True
    assert max_similarity(gen, y, train, mask=mask)[0][0] == pytest.approx(1 / 3)
    assert torch.allclose(accuracy(gen, y)[:2], torch.tensor([4 / 6, 1.0], dtype=torch.float64))
    ag = agreement(gen, train, [1, 2, 0])
    assert ag[0] == pytest.approx(4 / 6) and ag[1] == pytest.approx(3 / 6) and math.isnan(ag[2])


def test_permuted_copy_of_a_gpt_with_tied_embeddings_and_heads_is_found():
    from weightspace.tasks import example_input
    models = [build("gpt", seed=s, vocab_size=11, block_size=4, n_layer=1, n_head=2, d_model=8, attention="fused")
              for s in range(3)]
    space = WeightSpace.from_module(models[0], example_input(models[0]))
    assert space.aliases and any(g.parent for g in space.groups)
    sds = [m.state_dict() for m in models]
    copy = _permuted(space, sds[1], 0)
    res = nearest(space, [copy], sds, k=3)
    assert res.indices.tolist() == [1] and res.distances[0] < 1e-6
    assert nearest(space, [copy], sds, aligned=False).distances[0] > 0.1


def test_training_from_a_collection_and_data_as_a_callable(zoo, tmp_path):
    space, train = zoo["space"], zoo["train"]
    coll = CheckpointCollection.create(tmp_path / "zoo")
    for i, sd in enumerate(train):
        with coll.run_writer(f"r{i}", space=space) as w:
            w.append(0, _permuted(space, zoo["held_out"][0], i))
            w.append(5, _clone(sd) if i != 2 else _permuted(space, sd, 9))
    res = nearest(None, [_permuted(space, train[2], 4)], coll)  # the last checkpoint of each run, runs sorted
    assert res.indices.tolist() == [2] and res.distances[0] < 1e-5
    with pytest.raises(MemorizationError, match="all checkpoints from the same run"):
        spread(None, _single_run(coll), exclude_same_run=True)
    x, y = zoo["data"]
    from torch.func import functional_call

    def predict(sd):
        return functional_call(zoo["model"], dict(sd), (x,)).argmax(1), y

    with pytest.raises(MemorizationError, match="model/model_fn would be unused"):
        report(space, [train[0]], coll, data=predict, model=zoo["model"], baselines=())
    rep = report(space, [_permuted(space, train[0], 1)], coll, data=predict, baselines=())
    assert rep.verdicts == {"generated": "copies"}
    g = rep.group("generated")
    assert g.behaviour["max_similarity"][0] == 1.0 and g.behaviour["agreement"][0] == 1.0


def _single_run(coll):
    """Every checkpoint of the collection as a training model, all labelled with one run."""
    from weightspace.memorization import load_training
    t = load_training(coll, steps="all")
    assert len(t.models) == 8
    t.groups = ["same"] * len(t.groups)
    return t


def test_recipe_model_rebuilds_each_runs_own_nonlinearity(tmp_path):
    """Runs of the same shapes with different activations are different architectures, so the model rebuilt
    for a checkpoint computes what the checkpoint's own run computed (not the first run's activation)."""
    from weightspace.memorization.training import recipe_model
    from weightspace.tasks.zoo import RECIPES

    recipe = RECIPES["digits-cnn"]
    base = recipe.config(0)
    coll = CheckpointCollection.create(tmp_path / "zoo", name="acts")
    x = torch.rand(3, 1, 8, 8)
    made = {}
    for act in ("relu", "tanh"):
        config = {**base, "activation": act}
        model = recipe.model(config).eval()
        space = WeightSpace.from_module(model, x)
        with coll.run_writer(f"run-{act}", space=space, hparams=config) as w:
            w.append(0, model.state_dict(), {"test_acc": 0.1})
        made[act] = (model, space)
    assert len(coll.architectures()) == 2
    for act, (model, space) in made.items():
        rebuilt = recipe_model(coll, coll.space(space.fingerprint)).eval()
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(rebuilt(x), model(x), msg=act)
