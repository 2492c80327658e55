"""The README.md dataset card that makes a collection folder a valid Hugging Face dataset repository.

It is a ``huggingface_hub.DatasetCard``: YAML metadata (``DatasetCardData``), then the collection's
description (a zoo's is its recipe card from ``datasets/<recipe>.md``), then a summary of what is stored.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping, Sequence


RESERVED_COLUMNS = ("run_id", "step", "arch_id", "file", "num_bytes", "finished", "slot")
HP_PREFIX = "hp."


def card_metadata(name: str, license: str) -> Any:
    """``DatasetCardData``: tags for discovery and a config pointing the Hub viewer at the metadata shards."""
    from huggingface_hub import DatasetCardData

    return DatasetCardData(license=license, pretty_name=name, tags=["weightspace", "model-zoo"],
                           configs=[{"config_name": "default",
                                     "data_files": [{"split": "train", "path": "metadata/*.jsonl"}]}])


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def render_card(*, name: str, description: str, license: str, rows: Sequence[Mapping[str, Any]],
                finished: Mapping[str, bool], spaces: Mapping[str, Any]) -> str:
    """The full README.md text (a ``DatasetCard``): metadata, the description, a summary of runs,
    architectures and metrics, the layout and a usage example. A description that starts with a
    ``# `` heading (a recipe card) is the card's body as it is; otherwise it follows a ``# name`` heading."""
    from huggingface_hub import DatasetCard

    runs = sorted({r["run_id"] for r in rows})
    n_done = sum(bool(finished.get(r)) for r in runs)
    per_arch = Counter(r["arch_id"] for r in rows)
    runs_per_arch: dict[str, set[str]] = {}
    for r in rows:
        runs_per_arch.setdefault(r["arch_id"], set()).add(r["run_id"])
    hp_cols = sorted({k for r in rows for k in r if k.startswith(HP_PREFIX)})
    metric_cols = sorted({k for r in rows for k in r if k not in RESERVED_COLUMNS and not k.startswith(HP_PREFIX)})

    desc = description.strip()
    lines = [] if desc.startswith("# ") else [f"# {name}", ""]
    if desc:
        lines += [desc, ""]
    lines += [
        "## This collection",
        "",
        "A checkpoint collection written by `weightspace`: "
        "every checkpoint of every training run, as safetensors, with one metadata row per checkpoint.",
        "",
        f"- **runs:** {len(runs)} ({n_done} finished)",
        f"- **checkpoints:** {len(rows)}",
        f"- **architectures:** {len(per_arch)}",
        "",
    ]
    if per_arch:
        lines += ["| arch_id | model | tensors | parameters | runs | checkpoints |", "|---|---|---|---|---|---|"]
        for a, n in sorted(per_arch.items()):
            sp = spaces.get(a)
            model = getattr(sp, "name", "") or "?"
            tensors = len(sp.keys) if sp is not None else "?"
            params = f"{sp.num_params:,}" if sp is not None else "?"
            lines.append(f"| `{a}` | {model} | {tensors} | {params} | {len(runs_per_arch[a])} | {n} |")
        lines.append("")
    if metric_cols:
        lines += ["| metric | rows | min | max |", "|---|---|---|---|"]
        for m in metric_cols:
            vals = [r[m] for r in rows if isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool)]
            vals = [v for v in vals if math.isfinite(v)]
            lo, hi = (_fmt(min(vals)), _fmt(max(vals))) if vals else ("-", "-")
            lines.append(f"| {m} | {len(vals)} | {lo} | {hi} |")
        lines.append("")
    if hp_cols:
        lines += ["Hyperparameters: " + ", ".join(f"`{h}`" for h in hp_cols), ""]
    lines += [
        "## Layout",
        "",
        "- `metadata/<run_id>.jsonl`: one row per checkpoint (`run_id`, `step`, `arch_id`, `file`, "
        "`num_bytes`, `finished`, `hp.*` hyperparameters, metrics). The dataset viewer shows these rows.",
        "- `weights/<run_id>/run-<token>.safetensors`: every checkpoint of a finished run, each tensor stacked along "
        "a leading step axis (the row's `slot`); `weights/<run_id>/step-<step>.safetensors` while a run is written.",
        "- `architectures/<arch_id>.json`: the WeightSpace (parameter axes, symmetry groups, graph layout) "
        "of each architecture.",
        "",
        "## Usage",
        "",
        "```python",
        "from weightspace.collections import CheckpointCollection",
        "",
        'coll = CheckpointCollection.open("hf://datasets/<owner>/<name>")',
        "state_dict = coll.load(coll.runs()[0], coll.steps(coll.runs()[0])[-1])",
        "graphs = coll.to_graphs()  # torch_geometric Data, metrics as y_<metric>",
        "```",
        "",
    ]
    card = DatasetCard(f"---\n{card_metadata(name, license).to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)
