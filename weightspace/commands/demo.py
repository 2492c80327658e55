"""``weightspace demo``: the end-to-end tour. It grows as capabilities land."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a tiny zoo, turn it into graphs and show what weightspace sees")
    p.add_argument("--out", default=None, help="where to keep the demo zoo (default: a temporary folder)")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..collections import CheckpointCollection
    from ..tasks.zoo import build_zoo
    from .graph import describe

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="weightspace-demo-")) / "digits-mlp"
    print(f"1. Building a {args.size} digits-MLP zoo in {out} (real training on scikit-learn digits)")
    build_zoo("digits-mlp", out, size=args.size, seed=0)
    coll = CheckpointCollection.open(out)
    print(f"   {coll!r}")
    row = coll.rows()[-1]
    space = coll.space(row)
    print("\n2. Its weight space, traced once from the model:")
    print("   " + describe(space).replace("\n", "\n   "))
    run_id = row["run_id"]
    steps = coll.steps(run_id)
    sds = coll.trajectory(run_id)
    data = space.to_graph(sds)
    print(f"\n3. Run {run_id}: {len(steps)} checkpoints (steps {steps[0]}..{steps[-1]}) as one neural graph:")
    print(f"   {data}")
    back = space.from_graph(data)
    exact = all(torch.equal(a[k], b[k]) for a, b in zip(back, sds) for k in a)
    print(f"   graph -> state_dicts round trip bit-exact: {exact}")
    perm = space.random_permutation(torch.Generator().manual_seed(0))
    moved = space.permute(sds[-1], perm)
    same = torch.equal(space.to_graph(moved).x, data.x[:, -1:][space.node_permutation(perm)])
    print(f"\n4. A random permutation of {len(perm)} hidden groups moves the weights but only relabels the "
          f"graph's nodes: {same}")
    graphs = coll.to_graphs(progress=False)
    print(f"\n5. The whole collection as {len(graphs)} graphs; test accuracy of the last checkpoints:")
    for r in coll.rows():
        if r["step"] == coll.steps(r["run_id"])[-1]:
            print(f"   {r['run_id']}: train_acc {r['train_acc']:.3f}, test_acc {r['test_acc']:.3f}")
    print(f"   training curves: {plot_curves(coll, out / 'curves.png')}")

    from ..align import weight_matching
    found = weight_matching(space, sds[-1], moved)
    aligned = space.permute(moved, found)
    recovered = all(torch.equal(aligned[k], sds[-1][k]) for k in aligned)
    print(f"\n6. Git Re-Basin weight matching undoes that permutation from the weights alone: {recovered}")
    return 0 if exact and same and recovered else 1


def plot_curves(coll, path: Path) -> Path:
    """Test accuracy against step for every run of a collection, as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for run in coll.runs():
        rows = [coll.row(run, s) for s in coll.steps(run)]
        ax.plot([r["step"] for r in rows], [r["test_acc"] for r in rows], marker="o", label=run)
    ax.set(xlabel="step", ylabel="test accuracy", title=coll.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
