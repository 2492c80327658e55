"""``weightspace generate fit|sample``: train a weight generator on a collection, then draw models from it.

``fit`` trains ``--method`` (``pdiff``: latent diffusion over the chosen tensors, Wang et al. 2024;
``graph-diffusion``: equivariant diffusion on the neural graph; ``hyper``: the stochastic graph
hypernetwork, meta-trained on digits) on the last checkpoint of every run of ``--train``
(``--checkpoints all``: every checkpoint; ``tail``: the last phase of the ``pdiff-*`` recipes) and writes ``OUT/model``. ``sample`` writes ``N``
``.safetensors`` models and their ``weightspace.json``, ready for ``weightspace memorization report
--generated``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..training.flags import add_train_arguments
from .config_file import add_config_option

SPACE_FILE = "weightspace.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="weight generators: fit on a collection, sample models",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gsub = p.add_subparsers(dest="generate_command", required=True)
    f = gsub.add_parser("fit", help="train a generator on a checkpoint collection")
    f.add_argument("--method", required=True, choices=["pdiff", "graph-diffusion", "hyper"])
    f.add_argument("--train", required=True, help="training CheckpointCollection (folder or hf://datasets/...)")
    f.add_argument("--out", required=True, help="output folder (re-running resumes)")
    f.add_argument("--checkpoints", choices=("last", "all", "tail"), default="last",
                   help="training checkpoints per run: the last one, all, or the last phase (tail: p-diff's data, "
                        "from the pdiff-* recipes)")
    f.add_argument("--keys", default="all",
                   help="pdiff: generated tensors: all, last:K, norm, or comma-separated key patterns")
    f.add_argument("--align", action="store_true", help="pdiff: weight-match the training models to the first one")
    f.add_argument("--ae-steps", type=int, default=None, help="pdiff: autoencoder steps (default: --steps)")
    f.add_argument("--hidden", type=int, default=None, help="width of the generator's networks")
    f.add_argument("--diffusion-steps", type=int, default=None, help="DDPM length (pdiff, graph-diffusion)")
    add_train_arguments(f, steps=2000, batch_size=None)
    add_config_option(f, fit)

    s = gsub.add_parser("sample", help="draw models from a fitted generator")
    s.add_argument("--model", required=True, help="folder from fit (OUT/model) or a Hub repo id")
    s.add_argument("--method", choices=["pdiff", "graph-diffusion", "hyper"], default=None,
                   help="the generator's kind (default: read from its config.json)")
    s.add_argument("--n", type=int, default=10, help="models to draw")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output folder of .safetensors models")
    s.set_defaults(func=sample)


def fit(args: argparse.Namespace) -> int:
    from ..collections import CheckpointCollection
    from ..errors import ConfigError
    from ..generate import GENERATORS
    from ..training import train_config_from_args

    coll = CheckpointCollection.open(args.train)
    cfg = train_config_from_args(args)
    if cfg.batch_size is None:
        cfg = replace(cfg, batch_size=4 if args.method == "hyper" else 32)
    options = {}
    if args.hidden is not None:
        options["hidden"] = args.hidden
    if args.diffusion_steps is not None:
        if args.method == "hyper":
            raise ConfigError("--diffusion-steps is an option of the diffusion generators, not of hyper")
        options["diffusion_steps"] = args.diffusion_steps
    pdiff_only = {"--keys": args.keys != "all", "--align": args.align, "--ae-steps": args.ae_steps is not None}
    used = [k for k, v in pdiff_only.items() if v]
    if args.method != "pdiff" and used:
        raise ConfigError(f"{', '.join(used)} only apply to --method pdiff")
    if args.method == "hyper" and args.checkpoints != "last":
        raise ConfigError("--checkpoints applies to the diffusion generators; hyper does not learn from them")
    out = Path(args.out)
    cls = GENERATORS[args.method]
    if args.method == "pdiff":
        keys = args.keys if args.keys in ("all", "norm") or args.keys.startswith("last:") else args.keys.split(",")
        ae = replace(cfg, steps=args.ae_steps) if args.ae_steps is not None else cfg
        cls.fit(coll, keys=keys, steps=args.checkpoints, align=args.align, autoencoder=ae, diffusion=cfg, out=out,
                progress=cfg.progress, **options)
        model_dir = out / "model"
    elif args.method == "graph-diffusion":
        cls.fit(coll, steps=args.checkpoints, config=cfg, out=out, progress=cfg.progress, **options)
        model_dir = out / "model"
    else:
        cls.fit(coll, config=cfg, out=out, progress=cfg.progress, **options)
        model_dir = out / "generator"
    from ..training import is_main_process
    if is_main_process():
        print(f"wrote {model_dir}")
    return 0


def _method(model: str) -> str:
    from ..errors import ConfigError
    path = Path(model) / "config.json"
    if not path.exists():
        raise ConfigError(f"cannot tell the generator's kind: no {path}; pass --method")
    cfg = json.loads(path.read_text())
    if "arch" in cfg:
        return "hyper"
    return "pdiff" if "keys" in cfg else "graph-diffusion"


def sample(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from ..generate import GENERATORS
    from ..utils import atomic_write

    gen = GENERATORS[args.method or _method(args.model)].from_pretrained(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen.space.save(out / SPACE_FILE)
    sds = gen.sample(args.n, seed=args.seed)
    for i, sd in enumerate(sds):
        tensors = {k: v.contiguous() for k, v in sd.items()}
        meta = {"weightspace.arch_id": gen.space.fingerprint}
        atomic_write(out / f"sample-{i:04d}.safetensors", lambda tmp, t=tensors: save_file(t, str(tmp), metadata=meta))
    print(f"wrote {len(sds)} models to {out}")
    return 0
