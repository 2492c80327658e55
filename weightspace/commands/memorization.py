"""``weightspace memorization report --generated DIR --train COLLECTION --out DIR``: how much generated weights memorize.

DIR holds the generated models as ``*.safetensors`` files. Their architecture is
``weightspace.json`` beside them, else the training collection's architecture (the one named by
the files' ``weightspace.arch_id`` metadata, or the collection's only one). The training set is the
last checkpoint of every run of that architecture (``--steps all`` for every checkpoint).

With ``--data`` the models are also run on that data set's held-out split: the model is rebuilt
from the zoo recipe the collection records (hyperparameter ``recipe``), or from ``--family`` and
``--model-args``. Writes report.json, report.md, distances.png and, with data, scatter.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import WeightSpaceError
from ..utils import read_safetensors

SPACE_FILE = "weightspace.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memorization", help="measure memorization of generated weights modulo permutations",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    msub = p.add_subparsers(dest="memorization_command", required=True)
    r = msub.add_parser("report", help="nearest training models, baselines, behaviour and a verdict",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--generated", required=True, help="folder of generated .safetensors models")
    r.add_argument("--train", required=True, help="training CheckpointCollection (folder or hf://datasets/...)")
    r.add_argument("--out", required=True, help="output folder")
    from ..memorization.behaviour import DATA_SETS
    r.add_argument("--data", choices=DATA_SETS, default=None, help="evaluate the models on this data set")
    r.add_argument("--family", help="model family of weightspace.tasks to run on --data (default: the zoo recipe)")
    r.add_argument("--model-args", default=None, help="JSON constructor arguments for --family")
    r.add_argument("--baselines", default="noise,average,gaussian",
                   help="comma-separated baselines (default sweeps); empty for none")
    r.add_argument("--samples", type=int, default=None, help="models per baseline variant (default: as generated)")
    r.add_argument("--k", type=int, default=5, help="nearest candidates refined by pairwise weight matching")
    r.add_argument("--copy-fraction", type=float, default=0.1,
                   help="'copies' below this fraction of the training spread")
    r.add_argument("--exclude-same-run", action="store_true",
                   help="the training spread ignores checkpoints of the same run")
    r.add_argument("--steps", choices=("last", "all", "tail"), default="last",
                   help="training checkpoints per run: the last one, all, or the last phase (tail: the pdiff-* recipes)")
    r.add_argument("--allow-nonfinite", action="store_true",
                   help="accept training checkpoints holding NaN/Inf values (they are left out of the distances); "
                        "generated models with NaN/Inf are always reported, not refused")
    r.add_argument("--device", default="auto", help="device of the distance search (auto, cpu, cuda)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=run)


def _model(args: argparse.Namespace, coll, space):
    from ..memorization.training import recipe_model
    from ..tasks import build
    if args.family:
        try:
            kwargs = json.loads(args.model_args) if args.model_args else {}
        except json.JSONDecodeError as e:
            raise WeightSpaceError(f"--model-args is not JSON: {e}") from e
        try:
            return build(args.family, seed=0, **kwargs)
        except (TypeError, ValueError) as e:
            raise WeightSpaceError(f"cannot build {args.family} with {kwargs}: {e}") from e
    if args.model_args:
        raise WeightSpaceError("--model-args needs --family")
    model = recipe_model(coll, space)
    if model is not None:
        return model
    raise WeightSpaceError(f"--data {args.data} needs a model to run: the collection records no zoo recipe for "
                           f"architecture {space.fingerprint}; pass --family and --model-args")


def run(args: argparse.Namespace) -> int:
    from ..collections import CheckpointCollection
    from ..memorization import report
    from ..space import WeightSpace

    gdir = Path(args.generated)
    if not gdir.is_dir():
        raise WeightSpaceError(f"--generated {gdir} is not a folder")
    files = sorted(gdir.glob("*.safetensors"))
    if not files:
        raise WeightSpaceError(f"no .safetensors files in {gdir}")
    coll = CheckpointCollection.open(args.train)
    loaded = [read_safetensors(f, "generated model") for f in files]
    if (gdir / SPACE_FILE).exists():
        space = WeightSpace.load(gdir / SPACE_FILE)
    else:
        arch = loaded[0][1].get("weightspace.arch_id")
        archs = coll.architectures()
        if arch in archs:
            space = coll.space(arch)
        elif len(archs) == 1:
            space = coll.space(archs[0])
        else:
            raise WeightSpaceError(f"no {SPACE_FILE} in {gdir} and the collection holds {len(archs)} architectures; "
                                   f"save the generated models' architecture as {gdir / SPACE_FILE}")
    model = _model(args, coll, space) if args.data else None
    if args.family and not args.data:
        raise WeightSpaceError("--family is used to run models on --data; pass --data too")
    from ..errors import StateDictMismatch
    from ..memorization import load_training
    from ..memorization.flat import first_mismatch
    for f, (sd, _) in zip(files, loaded):
        bad = first_mismatch(space, sd)
        if bad is not None:
            raise StateDictMismatch(f"generated model {f} does not match the training architecture "
                                    f"{space.name or space.fingerprint}: {bad}")
    training = load_training(coll, space, steps=args.steps, progress=not args.quiet,
                             allow_nonfinite=args.allow_nonfinite)
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    generated = {gdir.name or "generated": []}
    for f, (sd, _) in zip(files, loaded):
        generated[gdir.name or "generated"].append(sd)
    rep = report(space, generated, training, data=args.data, model=model, baselines=baselines,
                 samples=args.samples, k=args.k, copy_fraction=args.copy_fraction,
                 exclude_same_run=args.exclude_same_run, device=args.device, seed=args.seed,
                 progress=not args.quiet)
    out = rep.save(args.out)
    print(rep.markdown())
    print(f"wrote {out / 'report.json'}, report.md, distances.png" + (", scatter.png" if args.data else ""))
    return 0
