"""Merging: identities of every method, TIES/DARE on hand-made tensors, streaming == in memory, configs, errors."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from families import MLP
from weightspace import NonFiniteWeights, StateDictMismatch, WeightSpace
from weightspace.merge import METHODS, MergeError, merge, merge_files, run_config
from weightspace.merge.methods import dare, ties


@pytest.mark.parametrize("method, parameters, model_parameters, field", [
    ("ties", {"densty": 0.5}, None, "did you mean 'density'"),
    ("linear", {}, [{"wieght": 2.0}, {}], "did you mean 'weight'"),
    ("slerp", {"tt": 0.3}, None, "did you mean 't'"),
    ("linear", {"density": 0.5}, None, "no parameter 'density'"),
    ("task_arithmetic", {"lamda": 0.5}, None, "did you mean 'lambda'"),
    ("slerp", {}, [{"density": 0.5}, {}], "no per-model parameter 'density'"),
    ("slerp", {"t": "half"}, None, "parameters.t must be a number"),
    ("ties", {"density": [{"filter": "net", "value": "x"}]}, None, r"parameters.density\[0\].value"),
    ("linear", {}, [{"weight": "2"}, {}], r"models\[0\].parameters.weight must be a number"),
    ("linear", {"normalize": 1}, None, "normalize must be true or false"),
    ("dare", {"seed": 0.5}, None, "seed must be an integer"),
])
def test_unknown_or_malformed_parameters_are_refused(tmp_path, method, parameters, model_parameters, field):
    a, b, base = models()
    kw = dict(base=base if METHODS[method].needs_base else None, parameters=parameters,
              model_parameters=model_parameters)
    with pytest.raises(MergeError, match=field):
        merge([a, b], method, **kw)
    for i, sd in enumerate((a, b, base)):
        save_file(sd, tmp_path / f"m{i}.safetensors")
    kw["base"] = tmp_path / "m2.safetensors" if kw["base"] is not None else None
    with pytest.raises(MergeError, match=field):
        merge_files([tmp_path / "m0.safetensors", tmp_path / "m1.safetensors"], tmp_path / "out", method, **kw)
    assert not (tmp_path / "out").exists()


def test_config_typos_and_unknown_dtypes_name_the_field(tmp_path):
    a, b, _ = models()
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    head = "merge_method: linear\nmodels:\n  - model: a.safetensors\n  - model: b.safetensors\n"
    for extra, field in [("dtype: bfloat61\n", "did you mean 'bfloat16'"),
                         ("dtype: int8\n", "unknown output dtype 'int8'"),
                         ("parameters: {normalise: true}\n", "did you mean 'normalize'"),
                         ("merge_metod: ties\n", "did you mean 'merge_method'")]:
        (tmp_path / "c.yml").write_text(head + extra)
        with pytest.raises(MergeError, match=field):
            run_config(tmp_path / "c.yml", tmp_path / "out")
        assert not (tmp_path / "out").exists()
    (tmp_path / "c.yml").write_text(head + "dtype: float16\n")
    out = load_file(run_config(tmp_path / "c.yml", tmp_path / "out") / "model.safetensors")
    assert all(t.dtype == torch.float16 for t in out.values())


def test_a_failed_merge_leaves_no_partial_output(tmp_path):
    a, b, _ = models()
    bad = {k: v.clone() for k, v in b.items()}
    bad[list(bad)[-1]][0] = float("nan")
    save_file(a, tmp_path / "a.safetensors")
    save_file(bad, tmp_path / "b.safetensors")
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    with pytest.raises(NonFiniteWeights):
        merge_files(paths, tmp_path / "new" / "out", "linear")
    assert not (tmp_path / "new" / "out").exists()
    assert [p.name for p in (tmp_path / "new").iterdir()] == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(NonFiniteWeights):
        merge_files(paths, mine, "linear")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    save_file(b, tmp_path / "b.safetensors")
    merge_files(paths, mine, "linear")
    assert sorted(p.name for p in mine.iterdir()) == ["model.safetensors", "notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def models(n=3, sizes=(6, 8, 3)):
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(MLP(sizes).state_dict())
    return out


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merging_identical_models_returns_the_model(method):
    sd = models(1)[0]
    n = 2
    out = merge([sd] * n, method, base=sd if METHODS[method].needs_base else None)
    for k in sd:
        torch.testing.assert_close(out[k], sd[k])


def test_linear_and_slerp_endpoints():
    a, b, _ = models()
    for t, ref in ((0.0, a), (1.0, b)):
        out = merge([a, b], "slerp", parameters={"t": t})
        for k in a:
            torch.testing.assert_close(out[k], ref[k])
    out = merge([a, b], "linear", model_parameters=[{"weight": 1.0}, {"weight": 0.0}])
    for k in a:
        torch.testing.assert_close(out[k], a[k])
    out = merge([a, b], "slerp", parameters={"t": 0.5})
    assert out["net.0.weight"].norm() > (0.5 * (a["net.0.weight"] + b["net.0.weight"])).norm()


def test_ties_and_dare_on_hand_made_tensors():
    base = torch.zeros(4)
    t1 = torch.tensor([1.0, -2.0, 0.1, 3.0])
    t2 = torch.tensor([2.0, 1.0, -0.2, -0.5])
    out = ties([t1, t2], [1.0, 1.0], base, density=1.0)
    torch.testing.assert_close(out, torch.tensor([1.5, -2.0, -0.2, 3.0]))
    out = ties([t1, t2], [1.0, 1.0], base, density=0.5)
    torch.testing.assert_close(out, torch.tensor([2.0, -2.0, 0.0, 3.0]))
    d = dare([t1], [1.0], base, density=0.5, key="w", seed=0)
    kept = d != 0
    torch.testing.assert_close(d[kept], 2 * t1[kept])
    torch.testing.assert_close(dare([t1], [1.0], base, density=0.5, key="w", seed=0), d)
    torch.testing.assert_close(dare([t1], [1.0], base, density=1.0, key="w"), t1)


def test_task_arithmetic_and_model_stock():
    base, a, b = models()
    out = merge([a, b], "task_arithmetic", base=base, parameters={"lambda": 0.5})
    k = "net.0.weight"
    torch.testing.assert_close(out[k], base[k] + 0.5 * (a[k] - base[k] + b[k] - base[k]))



def test_model_stock_matches_the_closed_form_by_hand():
    """Two task vectors at 60 degrees (cos = 1/2): t = k cos / (1 + (k - 1) cos) = 2/3 for k = 2
    (Jang et al. 2024), so merged = 2/3 * mean + 1/3 * base."""
    base = {"w": torch.tensor([1.0, 1.0, 0.0])}
    a = {"w": torch.tensor([3.0, 1.0, 0.0])}                          # delta (2, 0, 0)
    b = {"w": torch.tensor([2.0, 1.0 + 3 ** 0.5, 0.0])}               # delta (1, sqrt 3, 0): cos = 1/2
    out = merge([a, b], "model_stock", base=base)["w"]
    mean = (a["w"] + b["w"]) / 2
    torch.testing.assert_close(out, 2 / 3 * mean + 1 / 3 * base["w"])
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0 + 3 ** 0.5 / 3, 0.0]))


def test_streaming_equals_in_memory_and_config(tmp_path):
    sds = models(3)
    for i, sd in enumerate(sds):
        save_file(sd, tmp_path / f"m{i}.safetensors")
    paths = [tmp_path / "m1.safetensors", tmp_path / "m2.safetensors"]
    for method, params in [("linear", {}), ("ties", {"density": 0.5}), ("dare", {"density": 0.5, "seed": 3}),
                           ("task_arithmetic", {"lambda": 0.7}), ("model_stock", {})]:
        base = tmp_path / "m0.safetensors" if METHODS[method].needs_base else None
        mem = merge(paths, method, base=base, parameters=params)
        out = merge_files(paths, tmp_path / method, method, base=base, parameters=params)
        disk = load_file(out / "model.safetensors")
        assert set(disk) == set(mem)
        assert all(torch.equal(disk[k], mem[k]) for k in mem), method
    space = WeightSpace.from_module(MLP((6, 8, 3)), torch.randn(2, 6))
    space.save(tmp_path / "space.json")
    (tmp_path / "merge.yml").write_text(
        "merge_method: ties\nbase_model: m0.safetensors\nspace: space.json\nalign: weight\n"
        "models:\n  - model: m1.safetensors\n    parameters: {weight: 2.0, density: 0.3}\n  - model: m2.safetensors\n"
        "parameters:\n  density: [{filter: 'net\\.0', value: 0.8}, {value: 0.5}]\n")
    out = run_config(tmp_path / "merge.yml", tmp_path / "cfg")
    merged = load_file(out / "model.safetensors")
    assert WeightSpace.load(out / "weightspace.json") == space
    space.check(merged)
    mem = merge(paths, "ties", base=tmp_path / "m0.safetensors", align="weight", space=space,
                parameters={"density": [{"filter": "net\\.0", "value": 0.8}, {"value": 0.5}]},
                model_parameters=[{"weight": 2.0, "density": 0.3}, {}])
    assert all(torch.equal(merged[k], mem[k]) for k in mem)


def test_align_brings_permuted_copy_back():
    a = models(1)[0]
    space = WeightSpace.from_module(MLP((6, 8, 3)), torch.randn(2, 6))
    b = space.permute(a, space.random_permutation(torch.Generator().manual_seed(0)))
    out = merge([a, b], "linear", align="weight", space=space)
    assert all(torch.equal(out[k], a[k]) for k in a)
    with pytest.raises(MergeError, match="space"):
        merge([a, b], "linear", align="weight")


def test_bad_merges_are_refused(tmp_path):
    a, b, _ = models()
    with pytest.raises(StateDictMismatch, match="different architectures"):
        merge([a, models(1, (6, 9, 3))[0]], "linear")
    with pytest.raises(StateDictMismatch, match="float64"):
        merge([a, {k: v.double() for k, v in b.items()}], "linear")
    bad = {k: v.clone() for k, v in b.items()}
    bad["net.0.bias"][0] = float("inf")
    with pytest.raises(NonFiniteWeights):
        merge([a, bad], "linear")
    with pytest.raises(MergeError, match="sum to"):
        merge([a, b], "linear", parameters={"normalize": False}, model_parameters=[{"weight": 0.7}, {"weight": 0.7}])
    with pytest.raises(MergeError, match="base model"):
        merge([a, b], "ties")
    with pytest.raises(MergeError, match="unknown merge method"):
        merge([a, b], "nope")
    (tmp_path / "c.yml").write_text("merge_method: linear\nmodels:\n  - model: missing.safetensors\n")
    with pytest.raises(MergeError, match="missing.safetensors"):
        run_config(tmp_path / "c.yml", tmp_path / "out")
