"""Plugin discovery through real entry points; a broken plugin does not break the rest."""

import subprocess
import sys
import textwrap

import pytest

from layersync.cli import train
from layersync.plugins import Registry

PLUGIN = """
from layersync import hookimpl

@hookimpl
def layersync_datasets():
    return {"thirdparty-noise": lambda **kw: None}
"""


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """Install two distributions (a good and a broken plugin) on sys.path."""
    for name, body in [("good_plugin", PLUGIN), ("broken_plugin", "raise ImportError('needs libfoo')\n")]:
        (tmp_path / f"{name}.py").write_text(body)
        info = tmp_path / f"{name}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[layersync]\n{name.split('_')[0]} = {name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


def test_image_plugin_found_through_its_entry_point():
    reg = Registry()
    info = {p.name: p for p in reg.plugins}["image"]
    assert info.error is None and info.version == "0.1.0"
    assert "sit" in info.provides["backbones"] and "image" in info.provides["modalities"]


def test_broken_plugin_reported_and_others_load(fake_dists):
    reg = Registry()
    by_name = {p.name: p for p in reg.plugins}
    assert "needs libfoo" in by_name["broken"].error
    assert by_name["good"].provides == {"datasets": ["thirdparty-noise"]}
    assert by_name["good"].version == "1.2.3"
    assert "sit" in reg.names("backbones")
    with pytest.raises(KeyError, match="thirdparty-noise"):
        reg.get("datasets", "missing")


def test_plugins_command_prints_one_line_per_plugin(fake_dists):
    out = subprocess.run([sys.executable, "-m", "layersync.cli.main", "plugins"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "FAILED" in lines["broken"] and "needs libfoo" in lines["broken"]
    assert lines["good"].startswith("good 1.2.3: datasets: thirdparty-noise")
    assert "backbones: sit" in lines["image"]


def test_duplicate_names_are_refused(tmp_path, monkeypatch):
    (tmp_path / "clash.py").write_text(textwrap.dedent("""
        from layersync import hookimpl
        @hookimpl
        def layersync_backbones():
            return {"sit": object}
    """))
    info = tmp_path / "clash-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clash\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[layersync]\nzclash = clash\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    clash = {p.name: p for p in reg.plugins}["zclash"]
    assert "already provided by plugin 'image'" in clash.error
    assert reg.get("backbones", "sit") is not object


def test_image_plugin_loads_without_the_evaluator_dependency():
    """torch-fidelity is needed to evaluate, not to train: without it the plugin still loads
    (as on a machine that has only torch), and the evaluator says what to install."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch_fidelity"] = None  # importing it now raises ImportError
        from layersync.plugins import Registry
        reg = Registry()
        print({p.name: p.error for p in reg.plugins}["image"])
        from layersync_image.inception import FIDInception
        try:
            FIDInception("weights.pth")
        except ModuleNotFoundError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    error, message = out.stdout.splitlines()
    assert error == "None"
    assert "pip install torch-fidelity" in message


def test_every_cli_says_why_a_plugin_failed(fake_dists, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("layersync.plugins._registry", None)  # discover the fake distributions
    with pytest.raises(SystemExit) as info:
        train.main(["--plugin", "broken", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "plugin 'broken' failed to load: ImportError: needs libfoo" in capsys.readouterr().err
    with pytest.raises(KeyError, match="unknown backbone 'mynet' .*plugin 'broken' failed to load: ImportError"):
        Registry().get("backbones", "mynet")
