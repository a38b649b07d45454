"""layersync check-plugin: the first-party plugins conform; broken third-party backbones are caught."""

import argparse
import textwrap

import pytest
import torch

from layersync.check import Report, check_plugin, check_tiny_backbone, exit_code
from layersync.cli import check_plugin as cli
from layersync.plugins import Registry, registry

# A third-party modality built from core's pieces; MODE breaks its backbone on purpose.
PLUGIN = textwrap.dedent("""
    from pathlib import Path

    import numpy as np
    import torch

    from layersync import Modality, hookimpl
    from layersync.metrics.weights import WeightFile, resolve_weights
    from layersync.nn import build_sit1d

    LAYERSYNC_PLUGIN_API = 1
    MODE = "{mode}"
    HERE = Path(__file__).parent


    class Noise(torch.utils.data.Dataset):
        sample_shape, num_classes = (4, 16), 3

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.randn(self.sample_shape, generator=torch.Generator().manual_seed(i)), i % 3


    class Net(torch.nn.Module):
        def __init__(self, input_shape, num_classes, size="T/2"):
            super().__init__()
            self.net = build_sit1d(input_shape, num_classes, size=size)
            self.depth = self.net.depth

        def drop_cond(self, cond, drop):
            return self.net.drop_cond(cond, drop)

        def forward(self, x, t, cond, capture=()):
            out, hidden = self.net(x, t, cond, capture=capture)
            if MODE == "bare":
                return out
            if MODE == "item" and t.max().item() > 2:  # a host sync
                out = -out
            return out, hidden


    def save(x, stem, info):
        path = Path(stem).with_suffix(".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, x.numpy())
        return path


    class Set:
        def __init__(self, path):
            self.path = path
            self.x = np.load(path)["arr_0"]

        def __len__(self):
            return len(self.x)

        def batches(self, size):
            return (self.x[i : i + size] for i in range(0, len(self.x), size))

        def statistics(self):
            return {{}}


    class Count:
        def __init__(self, weights=None, batch=8, device="cpu"):
            self.n = {{True: 0, False: 0}}

        def update(self, samples, real=False):
            self.n[real] += len(samples)

        def compute(self):
            return {{"samples": self.n[False], "reference": self.n[True]}}


    def needs_weights(weights=None, batch=8, device="cpu"):
        resolve_weights(WeightFile("{name}-net", "{name}-net.pth", "https://example.org/net.pth", None, None))


    @hookimpl
    def layersync_modalities():
        return {{"{name}": Modality("{name}", "noise", HERE / "{name}.yaml", save, read_samples=Set,
                                    evaluators=("{name}-count", "{name}-weighted"))}}


    @hookimpl
    def layersync_datasets():
        return {{"{name}-noise": Noise, "{name}-unused": Noise}}


    @hookimpl
    def layersync_backbones():
        return {{"{name}-net": Net}}


    @hookimpl
    def layersync_evaluators():
        return {{"{name}-count": Count, "{name}-weighted": needs_weights}}
""")

RECIPE = """
data: {{name: {name}-noise}}
model: {{name: {name}-net, size: T/2}}
layersync: {{pairs: [[2, 4]], weight: 0.2}}
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Put a plugin named ``name`` whose backbone behaves as ``mode`` on sys.path; returns a fresh Registry."""
    monkeypatch.setenv("LAYERSYNC_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setattr("layersync.plugins._registry", None)  # the CLI discovers the fake plugin

    def install(name: str, mode: str = "ok", body: str | None = None) -> Registry:
        module = f"{name}_plugin"
        (tmp_path / f"{module}.py").write_text(body if body is not None else PLUGIN.format(name=name, mode=mode))
        (tmp_path / f"{name}.yaml").write_text(RECIPE.format(name=name))
        info = tmp_path / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[layersync]\n{name} = {module}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        return Registry()

    return install


def cli_run(argv) -> int:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return cli.run(parser.parse_args(argv))


def rows(results) -> dict:
    return {(r.item, r.check): (r.status, r.detail) for r in results}


def test_image_plugin_conforms(capsys):
    assert cli_run(["image"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {tuple(line.split()[1:3]): line.split()[0] for line in lines[:-1]}
    assert set(table.values()) <= {"PASS", "SKIP"}
    for check in ("forward", "train-step", "graph-safety[fake]"):
        assert table["backbone/sit", check] == "PASS"
    assert table["modality/image", "save_samples"] == "PASS"
    assert table["dataset/imagefolder", "preview"] == table["modality/image", "cache_views"] == "PASS"
    assert table["tokenizer/sd-vae", "build"] in ("PASS", "SKIP")  # the cache recipe's; SKIP without the weights
    assert table["evaluator/image", "evaluate"] in ("PASS", "SKIP")  # SKIP without the Inception weights
    assert table["dataset/parquet", "-"] == "SKIP"  # no recipe of the plugin uses it
    assert ", 0 failed, " in lines[-1]


def test_audio_plugin_conforms():
    results = check_plugin("audio")
    assert {r.status for r in results} <= {"PASS", "SKIP"}, [r for r in results if r.status == "FAIL"]
    found = rows(results)
    assert found["backbone/sit1d", "train-step"][0] == "PASS"
    assert found["tokenizer/mel", "encode"][0] == "PASS"
    assert exit_code(results) == 0


def test_backbone_without_a_recipe_runs_at_a_tiny_size():
    """Core has no modality: its backbones are built at size T/2 on a small input (sit1d here)."""
    report = Report()
    check_tiny_backbone(report, registry(), "core", "sit1d", torch.device("cpu"))
    found = rows(report.results)
    assert found["backbone/sit1d", "build"] == ("PASS", "size T/2, input (4, 16), 10 classes (no recipe)")
    for check in ("forward", "train-step", "graph-safety[fake]"):
        assert found["backbone/sit1d", check][0] == "PASS"


def test_conforming_third_party_plugin(install):
    found = rows(check_plugin("thirdok", install("thirdok")))
    assert found["plugin/thirdok", "load"][0] == "PASS"
    assert found["backbone/thirdok-net", "forward"][0] == "PASS"
    assert "pairs 2:4" in found["backbone/thirdok-net", "train-step"][1]
    assert found["modality/thirdok", "save_samples"][0] == "PASS"
    assert found["evaluator/thirdok-count", "evaluate"] == ("PASS", "10 samples vs 10 data items: reference, samples")
    status, detail = found["evaluator/thirdok-weighted", "evaluate"]
    assert status == "SKIP" and "thirdok-net.pth" in detail
    assert found["dataset/thirdok-unused", "-"][0] == "SKIP"
    assert "FAIL" not in {status for status, _ in found.values()}


def test_forward_returning_a_bare_tensor_fails(install, capsys):
    install("thirdbare", "bare")
    assert cli_run(["thirdbare"]) == 1
    lines = {tuple(line.split()[:3]): line for line in capsys.readouterr().out.splitlines()}
    assert "returned Tensor; it must return (out, {block: hidden})" in lines["FAIL", "backbone/thirdbare-net", "forward"]
    assert ("SKIP", "modality/thirdbare", "save_samples") in lines  # the other checks still report


def test_host_sync_in_forward_fails_graph_safety(install):
    found = rows(check_plugin("thirdsync", install("thirdsync", "item")))
    assert found["backbone/thirdsync-net", "forward"][0] == "PASS"
    status, detail = found["backbone/thirdsync-net", "graph-safety[fake]"]
    assert status == "FAIL" and "host sync" in detail and "thirdsync_plugin.py" in detail


def test_broken_and_unknown_plugins(install, capsys):
    install("thirdbroken", body="raise ImportError('needs libfoo')\n")
    assert cli_run(["thirdbroken"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["FAIL", "plugin/thirdbroken", "load"] and "needs libfoo" in out[0]
    assert cli_run(["nosuchplugin"]) == 2
    err = capsys.readouterr().err
    assert "unknown plugin 'nosuchplugin'" in err and "image" in err and "thirdbroken" in err


def test_a_modality_fixture_sets_the_recipe_over(install):
    """check_fixture gets an empty folder for the checks' duration; its --set assignments reach the config."""
    fixture = textwrap.dedent("""
        SEEN = []


        def fixture(folder):
            SEEN.append((folder, sorted(folder.iterdir())))
            (folder / "model.bin").write_bytes(b"tiny")
            return ["layersync.pairs=[[1,3]]"]
    """)
    body = PLUGIN.format(name="thirdfix", mode="ok") + fixture
    body = body.replace("read_samples=Set,", "read_samples=Set, check_fixture=fixture,")
    found = rows(check_plugin("thirdfix", install("thirdfix", body=body)))
    assert found["modality/thirdfix", "recipe"] == ("PASS", "thirdfix.yaml + check fixture")
    assert "pairs 1:3" in found["backbone/thirdfix-net", "train-step"][1]  # the recipe says 2:4
    assert "FAIL" not in {status for status, _ in found.values()}
    import thirdfix_plugin

    [(folder, contents)] = thirdfix_plugin.SEEN
    assert contents == [] and not folder.exists()  # empty when given, removed after the checks


def test_a_plugin_without_its_api_version_fails(install):
    body = PLUGIN.format(name="thirdapi", mode="ok").replace("LAYERSYNC_PLUGIN_API = 1\n", "")
    found = rows(check_plugin("thirdapi", install("thirdapi", body=body)))
    assert found["plugin/thirdapi", "load"][0] == "PASS"
    status, detail = found["plugin/thirdapi", "api"]
    assert status == "FAIL" and detail.startswith("thirdapi_plugin declares no LAYERSYNC_PLUGIN_API: set "
                                                  "LAYERSYNC_PLUGIN_API = 1")
    assert found["backbone/thirdapi-net", "train-step"][0] == "PASS"  # the other checks go on


def test_an_unmarked_hook_function_is_a_warning(install):
    body = PLUGIN.format(name="thirdmark", mode="ok").replace("@hookimpl\ndef layersync_evaluators",
                                                           "def layersync_evaluators")
    results = check_plugin("thirdmark", install("thirdmark", body=body))
    assert ("WARN", "plugin/thirdmark", "load",
            "function layersync_evaluators is not marked with @layersync.hookimpl, so it is ignored (decorate it to "
            "contribute what it returns)") in [(r.status, r.item, r.check, r.detail) for r in results]


POOLED = """
import torch

from layersync import hookimpl
from layersync.nn import build_sit1d

LAYERSYNC_PLUGIN_API = 1


class PooledSiT(torch.nn.Module):
    def __init__(self, input_shape, num_classes, size="T/2"):
        super().__init__()
        self.net = build_sit1d(input_shape, num_classes, size=size)
        self.depth = self.net.depth

    def drop_cond(self, cond, drop):
        return self.net.drop_cond(cond, drop)

    def forward(self, x, t, cond, capture=()):
        out, hidden = self.net(x, t, cond, capture=capture)
        return out, {k: h.mean(1) for k, h in hidden.items()}  # pooled: (B, D) where (B, T, D) is due


@hookimpl
def layersync_backbones():
    return {"pooled": PooledSiT}
"""


def test_a_backbone_without_a_recipe_is_named_by_plugin_and_item(install):
    found = rows(check_plugin("thirdpool", install("thirdpool", body=POOLED)))
    status, detail = found["backbone/pooled", "forward"]
    assert status == "FAIL" and "plugin 'thirdpool', backbone 'thirdpool:pooled': forward" in detail
    assert "PooledSiT" not in detail
