"""Every quickstart block of README.md runs as written (each in a fresh namespace, in a scratch folder)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(# quickstart: [^\n]*\n.*?)```", README.read_text(), re.S)


def test_the_readme_has_a_quickstart_for_each_capability():
    names = [b.splitlines()[0][len("# quickstart: "):] for b in BLOCKS]
    for capability in ("weight space", "collections", "predicting", "nowcasting", "alignment", "parameter prediction",
                       "generating"):
        assert any(capability in n for n in names), (capability, names)


@pytest.mark.parametrize("code", BLOCKS, ids=[b.splitlines()[0][len("# quickstart: "):] for b in BLOCKS])
def test_quickstart_block_runs(code, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
