"""The README's snippet for foreign training loops runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_own_loop_snippet_runs():
    text = README.read_text()
    section = text.split("## LayerSync in your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README snippet", "exec"), scope)
    first = scope["blocks"][0].weight.grad
    assert first is not None and first.abs().sum() > 0
    assert scope["loss"].requires_grad


def test_sampling_from_python_snippet_runs(tiny_run, tmp_path, monkeypatch):
    section = README.read_text().split("## Sampling from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace("runs/digits", str(tiny_run))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README snippet", "exec"), scope)
    assert scope["images"].shape[0] == 4 and scope["info"] == {}
    assert scope["preview"].kind == "image" and (tmp_path / "grid.png").stat().st_size > 0
