"""The published artefacts work outside the workspace: the core and audio wheels (built through
their sdists, as `uv build` does by default), installed with --no-deps into a fresh virtual
environment, find each other through the entry point, find no other plugin, and train.

The fresh environment borrows the torch stack of the environment running the tests instead of
downloading it: a folder of symlinks to every entry of this environment's site-packages except
the workspace's own packages (their code, their *.dist-info, their editable .pth files), added to
the new environment's sys.path by a .pth file. Pointing a .pth at this site-packages itself would
not do: importlib.metadata reads every *.dist-info on sys.path, so the workspace's editable
layersync-image (and its entry point) would show up in the fresh environment."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ("layersync", "_layersync", "__editable__")  # the workspace's packages, lower-case prefixes
WHEELS = ("layersync-core", "layersync-audio")

pytestmark = [pytest.mark.install,
              pytest.mark.skipif(os.name == "nt", reason="links the torch stack with symlinks")]


def run(argv, timeout=300, **kwargs):
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert out.returncode == 0, f"{argv[0]} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def uv() -> str:
    exe = os.environ.get("UV") or shutil.which("uv")
    if not exe:
        pytest.skip("uv is not installed")
    return exe


def site_packages() -> list[Path]:
    """This environment's site-packages folders (purelib and platlib, once each)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[key]).resolve() for key in ("purelib", "platlib")))


def borrowed_site(folder: Path) -> Path:
    """A folder of links to this environment's installed packages, less the workspace's own."""
    folder.mkdir()
    for site in site_packages():
        for entry in site.iterdir():
            name = entry.name.lower()
            if name.startswith(HIDDEN) or name.endswith(".pth") or (folder / entry.name).exists():
                continue
            (folder / entry.name).symlink_to(entry)
    return folder


def clean_env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX") and not k.startswith("LAYERSYNC_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def test_core_and_audio_wheels_install_and_train_in_a_fresh_environment(tmp_path):
    # 1. sdists and wheels of the two packages, out of the repository
    dist = tmp_path / "dist"
    for package in WHEELS:  # uv build takes one --package
        run([uv(), "build", "--package", package, "--out-dir", dist], cwd=ROOT)
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["layersync_audio", "layersync_core"], wheels

    # 2. a fresh environment of the same Python that sees the torch stack but no workspace package
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    env = clean_env(venv)
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip()
    (Path(purelib) / "00-borrowed-site.pth").write_text(f"{borrowed_site(tmp_path / 'borrowed')}\n")

    # 3. only the two wheels, from the folder, nothing resolved or downloaded
    run([uv(), "pip", "install", "--python", python, "--no-deps", "--no-index", *wheels], env=env, cwd=tmp_path)

    probe = run([python, "-c", (
        "import importlib.util, json, layersync, layersync_audio, torch\n"
        "from layersync.plugins import Registry\n"
        "print(json.dumps({'core': layersync.__file__, 'audio': layersync_audio.__file__, 'torch': torch.__file__,"
        " 'image': importlib.util.find_spec('layersync_image') is not None,"
        " 'plugins': sorted(p.name for p in Registry().plugins)}))"
    )], env=env, cwd=tmp_path)
    where = json.loads(probe.stdout)
    assert Path(where["core"]).is_relative_to(venv) and Path(where["audio"]).is_relative_to(venv), where
    assert not Path(where["torch"]).is_relative_to(venv) and not where["image"], where

    # 4. the entry points: audio and core's built-ins, nothing else
    assert where["plugins"] == ["audio", "core"], where
    listed = run([venv / "bin" / "layersync", "plugins"], env=env, cwd=tmp_path).stdout
    starts = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {"audio", "core"} <= starts and not starts & {"image", "motion", "video"}, listed
    assert "FAILED" not in listed, listed

    # 5. a short run on the bundled spoken digits (the wheel's package data)
    out = tmp_path / "run"
    run([venv / "bin" / "layersync-train", "--plugin", "audio", "--steps", 2, "--out", out,
         "--set", "train.batch_size=8", "--set", "sample.num=2", "--set", "sample.steps=2"], env=env, cwd=tmp_path)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["step"] == 2, metrics
    assert list((out / "samples").glob("*.wav")), sorted(p.name for p in out.rglob("*"))


def test_the_environment_stays_in_sync_with_the_lock():
    """A synced environment matches uv.lock, so `uv run` installs nothing (decord 0.6.0's wheel, whose
    WHEEL file names cp36, made uv reinstall it on every command)."""
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": sys.prefix}  # the environment running these tests
    out = run([uv(), "sync", "--dry-run", "--locked", "--offline", "--inexact"], env=env, cwd=ROOT, timeout=60)
    assert "Would make no changes" in out.stderr, out.stderr
