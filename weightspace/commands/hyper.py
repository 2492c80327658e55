"""``weightspace hyper train|predict``: train a graph hypernetwork, or predict the parameters of an architecture.

``train`` runs under torchrun too (``torchrun --nproc_per_node 2 train/hyper.py train ...``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.flags import add_train_arguments
from .config_file import add_config_option


def register(sub: argparse._SubParsersAction) -> None:
    hyp = sub.add_parser("hyper", help="graph hypernetworks: predict every parameter of a model").add_subparsers(
        dest="action", required=True)
    t = hyp.add_parser("train", help="meta-train a hypernetwork on digits MLP/CNN architectures")
    t.add_argument("--out", required=True, help="output folder (re-running resumes from its last checkpoint)")
    t.add_argument("--families", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    t.add_argument("--mlp-widths", type=int, nargs="+", default=None, help="MLP hidden widths (default: zoo grid)")
    t.add_argument("--mlp-depths", type=int, nargs="+", default=None, help="MLP depths (default: zoo grid)")
    t.add_argument("--cnn-channels", type=int, nargs="+", default=None, help="CNN channel counts (default: zoo grid)")
    t.add_argument("--data-batch", type=int, default=64, help="digits examples per architecture and step")
    t.add_argument("--hidden", type=int, default=32)
    t.add_argument("--layers", type=int, default=0, help="message-passing layers of the metanetwork backbone")
    t.add_argument("--unit-features", type=int, default=16, help="features per permutable unit")
    t.add_argument("--unit-noise", type=float, default=0.0,
                   help="std of the Gaussian noise added to the units' position features (seeded per prediction)")
    t.add_argument("--random-units", action="store_true",
                   help="Gaussian unit features only, no relative positions (GHN-style; needs --unit-noise > 0)")
    t.add_argument("--parametrization", default="mip", choices=["mip", "ghn2"],
                   help="output scaling: MIP's theta0 + delta, or GHN-2's fan-in normalisation")
    t.add_argument("--held-out", default=None,
                   help="JSON list of architectures (as for predict --arch) evaluated every --eval-every steps")
    add_train_arguments(t, steps=2000, batch_size=4)
    add_config_option(t, train)

    p = hyp.add_parser("predict", help="predict a state_dict for one digits architecture")
    p.add_argument("--model", default=None,
                   help="folder from save_pretrained (e.g. OUT/model) or a Hub repo id (default: the packaged model)")
    p.add_argument("--allow-unseen", action="store_true",
                   help="predict even for layer kinds the hypernetwork was never trained on")
    p.add_argument("--arch", required=True,
                   help='architecture as JSON, e.g. \'{"family": "mlp", "widths": [64, 64]}\' (tasks.build arguments)')
    p.add_argument("--out", required=True, help="output .safetensors (weightspace.json is written beside it)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the prediction's random draws (MIP's theta0, unit-feature noise)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=predict)


def train(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..hyper import ArchDistribution, HyperTrainSpec, train_hypernetwork
    from ..training import is_main_process, train_config_from_args

    grid = {k: tuple(v) for k, v in (("mlp_widths", args.mlp_widths), ("mlp_depths", args.mlp_depths),
                                     ("cnn_channels", args.cnn_channels)) if v}
    held = ()
    if args.held_out:
        try:
            held = tuple(json.loads(args.held_out))
        except json.JSONDecodeError as e:
            raise ConfigError(f"--held-out is not a JSON list of architectures: {e}") from e
    spec = HyperTrainSpec(ArchDistribution(families=tuple(args.families), **grid), args.data_batch, held)
    hyper, result = train_hypernetwork(args.out, train_config_from_args(args), spec, hidden=args.hidden,
                                       layers=args.layers, unit_features=args.unit_features,
                                       parametrization=args.parametrization, unit_noise=args.unit_noise,
                                       positional=not args.random_units)
    if is_main_process():
        last = result.history[-1] if result.history else {}
        print(f"trained {result.step} steps ({result.graphs_per_second:.1f} architectures/s); last record {last}")
        print(f"model: {Path(args.out) / 'model'}; loss curve: {Path(args.out) / 'loss.png'}")
    return 0


def predict(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from ..errors import ConfigError
    from ..hyper import GraphHyperNetwork
    from ..space import WeightSpace
    from ..tasks import build, digits_split, example_input
    from ..utils import atomic_write, resolve_device

    try:
        arch = json.loads(args.arch)
        family = arch.pop("family")
    except (json.JSONDecodeError, AttributeError, KeyError) as e:
        raise ConfigError(f"--arch must be a JSON object with a 'family' key: {e}") from e
    try:
        model = build(family, seed=0, **arch)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build {family} with {arch}: {e}") from e
    device = resolve_device(args.device)
    hyper = GraphHyperNetwork.from_pretrained(args.model).to(device)
    x = example_input(model)
    data = digits_split(0, flat=x.dim() == 2)
    calibration = data.x_train[:256] if tuple(data.x_train.shape[1:]) == tuple(x.shape[1:]) else x
    sd = hyper.predict(model, x, seed=args.seed, calibration=calibration, allow_unseen=args.allow_unseen)
    out = Path(args.out)
    space = WeightSpace.from_module(model, x)
    canon = {k: v.detach().cpu().contiguous() for k, v in sd.items() if k not in space.aliases}
    atomic_write(out, lambda tmp: save_file(canon, str(tmp)))
    space.save(out.parent / "weightspace.json")
    print(f"wrote {out} ({space.num_params:,} values) and {out.parent / 'weightspace.json'}")
    return 0
