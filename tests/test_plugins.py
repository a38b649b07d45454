"""Plugin discovery through real entry points: a broken plugin does not break the rest, names
resolve the same way every time, and what a plugin returns is checked against its contract."""

import importlib
import logging
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from layersync import PLUGIN_API, build
from layersync.cli import main as main_cli
from layersync.cli import train
from layersync.errors import ConfigError, PluginError
from layersync.objective import FlowObjective, LayerSync
from layersync.plugins import Registry
from layersync.train.step import TrainStep

HEADER = "from layersync import hookimpl\nLAYERSYNC_PLUGIN_API = 1\n"
GOOD = HEADER + """
@hookimpl
def layersync_datasets():
    return {"thirdparty-noise": lambda **kw: None}
"""


def install(root, dist, body, entry=None, module=None, version="1.2.3"):
    """A distribution `dist` on sys.path whose entry point `entry` loads the module `body`."""
    module = module or dist
    sys.modules.pop(module, None)  # an earlier test's module of the same name
    importlib.invalidate_caches()
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[layersync]\n{entry or dist} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path (and PYTHONPATH, for subprocesses) to install fake distributions into."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr("layersync.plugins._registry", None)  # the CLIs discover them afresh
    return tmp_path


@pytest.fixture
def fake_dists(site):
    install(site, "good", GOOD)
    install(site, "broken", "raise ImportError('needs libfoo')\n")
    return site


def by_name(reg):
    return {p.name: p for p in reg.plugins}


def test_image_plugin_found_through_its_entry_point():
    info = by_name(Registry())["image"]
    assert info.error is None and info.version == "0.1.0" and info.api == PLUGIN_API and not info.warnings
    assert "sit" in info.provides["backbones"] and "image" in info.provides["modalities"]


def test_broken_plugin_reported_and_others_load(fake_dists):
    reg = Registry()
    plugins = by_name(reg)
    assert "needs libfoo" in plugins["broken"].error
    assert plugins["good"].provides == {"datasets": ["thirdparty-noise"]}
    assert plugins["good"].version == "1.2.3"
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


def test_plugins_verbose_shows_hook_implementations(fake_dists):
    out = subprocess.run([sys.executable, "-m", "layersync.cli.main", "plugins", "--verbose"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "  hook layersync_datasets: good.layersync_datasets" in out.stdout
    assert "  distribution good, module good, plugin API 1" in out.stdout
    assert "  hook layersync_backbones: layersync_image.plugin.layersync_backbones" in out.stdout


def test_misspelled_hook_fails_that_plugin_only(site):
    install(site, "typo", HEADER + "@hookimpl\ndef layersync_backbone():\n    return {}\n")
    reg = Registry()
    assert "unknown hook 'layersync_backbone'" in by_name(reg)["typo"].error
    assert "layersync_backbones" in by_name(reg)["typo"].error  # the known hooks are listed
    assert by_name(reg)["image"].error is None
    out = subprocess.run([sys.executable, "-m", "layersync.cli.main", "plugins"], capture_output=True, text=True)
    assert out.returncode == 0 and "typo 1.2.3: FAILED TO LOAD (PluginValidationError" in out.stdout


@pytest.mark.parametrize("body, error", [
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ("raise SystemExit('no GPU')\n", "SystemExit: no GPU"),
    ("raise GeneratorExit('odd')\n", "GeneratorExit: odd"),
])
def test_plugin_exiting_at_import_fails_alone(site, body, error):
    install(site, "quitter", body)
    reg = Registry()
    assert by_name(reg)["quitter"].error == error
    assert "image" in reg.names("modalities")


def test_keyboard_interrupt_at_import_still_interrupts(site):
    install(site, "stuck", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        Registry()


CLASH = HEADER + """
import torch
class Mine(torch.nn.Linear):
    pass
@hookimpl
def layersync_backbones():
    return {"sit": Mine, "mynet": Mine}
"""


@pytest.mark.parametrize("entry", ["aaa", "zzz"])  # before and after 'image' in name order
def test_first_party_wins_a_name_and_the_newcomer_keeps_the_rest(site, entry, caplog):
    install(site, "clash", CLASH, entry=entry)
    with caplog.at_level(logging.WARNING, "layersync.plugins"):
        reg = Registry()
    info = by_name(reg)[entry]
    assert info.error is None and info.provides == {"backbones": ["mynet", "sit"]}
    assert info.warnings == [f"backbone 'sit' is already provided by plugin 'image': refused here; "
                             f"use '{entry}:sit' to choose this one"]
    assert info.warnings[0] in caplog.text
    image_sit = reg.get("backbones", "sit")
    assert image_sit.__module__ == "layersync_image.sit"
    assert reg.get("backbones", "image:sit") is image_sit
    assert reg.get("backbones", f"{entry}:sit").__name__ == "Mine"
    assert reg.get("backbones", "mynet").__name__ == "Mine" and reg.owner("backbones", "mynet") == entry
    with pytest.raises(KeyError, match=f"plugin '{entry}' provides no backbone 'nope' .*mynet, sit"):
        reg.get("backbones", f"{entry}:nope")
    with pytest.raises(KeyError, match="no plugin 'ghost' is installed"):
        reg.get("backbones", "ghost:sit")


def test_between_third_parties_the_first_in_name_order_wins(site):
    install(site, "one", CLASH, entry="alpha", module="one")
    install(site, "two", CLASH, entry="beta", module="two")
    reg = Registry()
    assert reg.owner("backbones", "mynet") == "alpha"
    assert "backbone 'mynet' is already provided by plugin 'alpha'" in by_name(reg)["beta"].warnings[1]


def test_same_entry_point_name_from_two_distributions(site):
    install(site, "first-dist", GOOD, entry="noise", module="first_mod")
    install(site, "second-dist", HEADER + "@hookimpl\ndef layersync_datasets():\n    return {'other': dict}\n",
            entry="noise", module="second_mod")
    reg = Registry()
    healthy, refused = [p for p in reg.plugins if p.name == "noise"]
    assert healthy.error is None and healthy.dist == "first-dist"
    assert reg.get("datasets", "thirdparty-noise") is not None  # still there
    assert refused.dist == "second-dist"
    assert refused.error.startswith("entry point 'noise' of second-dist is already taken by first-dist")
    assert "other" not in reg.names("datasets")


def test_every_cli_says_why_a_plugin_failed(fake_dists, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--plugin", "broken", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "plugin 'broken' failed to load: ImportError: needs libfoo" in capsys.readouterr().err
    with pytest.raises(KeyError, match="unknown backbone 'mynet' .*plugin 'broken' failed to load: ImportError"):
        Registry().get("backbones", "mynet")


TOYS = HEADER + """
import dataclasses
import layersync_image.plugin as image  # a module: its own hook functions are not ours
@hookimpl
def layersync_modalities():
    return {"wave": dataclasses.replace(image.layersync_modalities()["image"], name="wave")}
"""


def test_plugin_option_takes_a_plugin_with_one_modality(site):
    install(site, "toys", TOYS)
    reg = Registry()
    assert build.modality_name(reg, "toys") == "wave" and build.modality_name(reg, "wave") == "wave"
    assert build.modality_name(reg, "image") == "image"
    with pytest.raises(ConfigError, match=r"plugin 'core' provides no modality: give --plugin a modality \(audio, diffusers, image, motion, video, wave\)"):
        build.modality_name(reg, "core")
    with pytest.raises(ConfigError, match=r"unknown plugin 'nope' \(known: audio, diffusers, image, motion, video, wave\)"):
        build.modality_name(reg, "nope")
    config = train.resolve(train.parser().parse_args(["--plugin", "toys", "--out", "x"]), reg)
    assert config["modality"] == "wave"


def test_disabled_plugins_are_skipped_and_named(site, monkeypatch):
    install(site, "good", GOOD)
    monkeypatch.setenv("LAYERSYNC_DISABLE_PLUGINS", "good, video")
    reg = Registry()
    assert by_name(reg)["good"].disabled and by_name(reg)["video"].disabled
    assert "thirdparty-noise" not in reg.names("datasets") and "video" not in reg.names("modalities")
    with pytest.raises(KeyError, match="plugin 'video' is disabled by LAYERSYNC_DISABLE_PLUGINS"):
        reg.get("modalities", "video")
    assert "image" in reg.names("modalities")


def test_trace_logs_imports_hooks_and_builds(monkeypatch, caplog):
    monkeypatch.setenv("LAYERSYNC_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.INFO, "layersync.plugins"):
        reg = Registry()
        build.make(reg, "tokenizers", "identity")
    assert "plugin 'image': imported layersync_image.plugin in" in caplog.text
    assert "plugin 'image': layersync_backbones() in" in caplog.text
    assert "tokenizer 'identity' of plugin 'core' built in" in caplog.text


@pytest.mark.parametrize("api, error", [
    (2, f"built for plugin API 2, but layersync-core .* speaks API {PLUGIN_API} \\(upgrade layersync-core\\)"),
    (0, f"built for plugin API 0, but layersync-core .* speaks API {PLUGIN_API} \\(upgrade old\\)"),
])
def test_plugin_for_another_api_is_refused(site, api, error):
    install(site, "old", GOOD.replace("LAYERSYNC_PLUGIN_API = 1", f"LAYERSYNC_PLUGIN_API = {api}"))
    reg = Registry()
    assert by_name(reg)["old"].error.startswith("PluginAPIError: ")
    assert re.search(error, by_name(reg)["old"].error)
    assert "thirdparty-noise" not in reg.names("datasets")


def test_plugin_without_api_declaration_loads_with_a_warning(site, caplog):
    install(site, "casual", GOOD.replace("LAYERSYNC_PLUGIN_API = 1\n", ""))
    with caplog.at_level(logging.WARNING, "layersync.plugins"):
        info = by_name(Registry())["casual"]
    assert info.error is None and info.api is None
    assert info.warnings == [f"declares no LAYERSYNC_PLUGIN_API; assuming it was built for API {PLUGIN_API}"]
    assert f"plugin 'casual': {info.warnings[0]}" in caplog.text  # what a training run's log shows


def test_a_hook_function_without_its_marker_is_a_warning(site, caplog, capsys):
    install(site, "unmarked", GOOD + "def layersync_modalities():\n    return {}\nlayersync_weights = None\n")
    with caplog.at_level(logging.WARNING, "layersync.plugins"):
        info = by_name(Registry())["unmarked"]
    expected = ("function layersync_modalities is not marked with @layersync.hookimpl, so it is ignored (decorate "
                "it to contribute what it returns)")
    assert info.error is None and info.warnings == [expected]
    assert f"plugin 'unmarked': {expected}" in caplog.text
    assert main_cli.main(["plugins"]) == 0
    assert f"  warning: {expected}" in capsys.readouterr().out


@pytest.mark.parametrize("hook, error", [
    ("def layersync_backbones():\n    return [object]", "layersync_backbones() returned list; expected a dict"),
    ("def layersync_modalities():\n    return {'m': {'recipe': 'x.yaml'}}",
     "modality 'm' is dict; expected a layersync.Modality"),
    ("def layersync_datasets():\n    return {'d': 3}", "dataset 'd' is int; expected a factory (a callable)"),
    ("def layersync_datasets():\n    return {'d': 'pkg.mod'}",
     "dataset 'd' is str; expected a factory (a callable) or 'module:attribute' naming one"),
    ("def layersync_weights():\n    return {'w': 'http://x'}", "weight 'w' is str; expected a layersync.metrics.WeightFile"),
    ("def layersync_backbones():\n    return {'a:b': dict}", "layersync_backbones() returned the name 'a:b'; expected a non-empty string without ':'"),
])
def test_hook_values_are_checked_when_loading(site, hook, error):
    install(site, "sloppy", HEADER + "@hookimpl\n" + hook + "\n")
    reg = Registry()
    assert by_name(reg)["sloppy"].error.startswith("PluginContractError: " + error)
    assert "image" in reg.names("modalities")


FACTORIES = HEADER + """
import torch
class Bare(torch.nn.Module):
    depth = 2
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
    def drop_cond(self, cond, drop):
        return cond
    def forward(self, x, t, cond, capture=()):
        return x * self.w
class NoDeep(Bare):
    def forward(self, x, t, cond, capture=()):
        return x * self.w, {}
@hookimpl
def layersync_backbones():
    return {"linear": lambda shape, classes: torch.nn.Linear(2, 2), "bare": Bare, "nodeep": NoDeep}
@hookimpl
def layersync_datasets():
    return {"listy": lambda: [1, 2, 3]}
@hookimpl
def layersync_tokenizers():
    return {"half": lambda: object()}
@hookimpl
def layersync_evaluators():
    return {"silent": lambda weights=None, batch=8, device="cpu": object()}
"""


def test_factories_are_checked_when_built(site):
    install(site, "contracts", FACTORIES)
    reg = Registry()
    with pytest.raises(PluginError, match="plugin 'contracts': backbone 'linear' returned Linear, but a backbone "
                                          "factory must return a torch.nn.Module with an int depth"):
        build.backbone(reg, {"model": {"name": "linear"}}, (2,), 0)
    with pytest.raises(PluginError, match="plugin 'contracts': dataset 'listy' returned list, .*map-style Dataset"):
        build.dataset(reg, {"data": {"name": "listy"}})
    with pytest.raises(PluginError, match="tokenizer 'half' returned object, .*a Tokenizer"):
        build.tokenizer(reg, {"tokenizer": {"name": "half"}})
    with pytest.raises(PluginError, match="evaluator 'silent' returned object, .*an Evaluator"):
        build.make(reg, "evaluators", "silent")


@pytest.mark.parametrize("name, error", [
    ("bare", r"plugin 'contracts', backbone 'bare': forward\(x, t, cond, capture\) returned Tensor; it must "
             r"return \(out, \{block: hidden\}\)"),
    ("nodeep", r"backbone 'nodeep': forward\(x, t, cond, capture\) captured \[\]; it must return a dict holding "
               r"blocks \[1, 2\]"),
])
def test_a_broken_forward_is_named_at_the_first_step(site, name, error):
    install(site, "contracts", FACTORIES)
    model = build.backbone(Registry(), {"model": {"name": name}}, (3, 4), 0)
    step = TrainStep(model, FlowObjective(), LayerSync([(1, 2)]), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(PluginError, match=error):
        step(torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long))


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


HEAVY = ("torchaudio", "timm", "scipy", "torchdiffeq", "transformers", "diffusers", "torch_fidelity", "decord", "smplx",
         "librosa")


def test_listing_plugins_imports_no_heavy_dependency():
    """Factories registered as "module:attribute" are imported on first use, not when plugins are listed."""
    code = ("import sys; from layersync.plugins import registry; r = registry(); "
            "print([r.names(c) for c in ('datasets', 'backbones', 'evaluators')][1], r.failures(), "
            f"sorted(m for m in {HEAVY} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['diffusers', 'sit', 'sit1d', 'sit3d'] {} []"


LAZY = HEADER + """
@hookimpl
def layersync_datasets():
    return {"later": "lazy_items:Items", "gone": "no_such_module:Items", "typo": "lazy_items:Itemz"}
"""


def test_a_string_factory_is_imported_on_first_use(site):
    install(site, "lazy", LAZY)
    (site / "lazy_items.py").write_text("class Items:\n    def __init__(self, size: int = 2):\n        pass\n")
    sys.modules.pop("lazy_items", None)
    reg = Registry()
    assert by_name(reg)["lazy"].provides == {"datasets": ["gone", "later", "typo"]}
    assert "lazy_items" not in sys.modules
    assert reg.get("datasets", "later").__name__ == "Items" and "lazy_items" in sys.modules
    assert reg.get("datasets", "lazy:later") is reg.get("datasets", "later")
    with pytest.raises(ConfigError, match="dataset 'later' does not accept these options: .*sise"):
        build.make(reg, "datasets", "later", sise=3)  # the real signature is checked
    with pytest.raises(PluginError, match="plugin 'lazy': dataset 'gone' is no_such_module:Items, which failed to "
                                          "import: ModuleNotFoundError: No module named 'no_such_module'"):
        reg.get("datasets", "gone")
    with pytest.raises(PluginError, match="plugin 'lazy': dataset 'typo' is lazy_items:Itemz, which failed to "
                                          "import: AttributeError"):
        build.dataset(reg, {"data": {"name": "typo"}})


def test_a_misspelled_evaluator_option_is_caught():
    with pytest.raises(ConfigError, match="evaluator 'fvd-i3d' does not accept these options: .*weigths"):
        build.make(Registry(), "evaluators", "fvd-i3d", weigths=None, batch=2, device="cpu")


FLAGS = HEADER + """
@hookimpl
def layersync_add_flags(parser, command):
    parser.add_argument_group("waveflags flags").add_argument("--wave-size", type=int, help="sets data.image_size")
@hookimpl
def layersync_flag_config(args, command):
    return [("--wave-size", "data.image_size", args.wave_size)] if args.wave_size is not None else []
"""


def test_plugins_add_their_own_flags(site):
    install(site, "waveflags", FLAGS)  # not "wave": that would shadow the standard library's module
    reg = Registry()
    args = train.parser(reg).parse_args(["--plugin", "image", "--out", "x", "--wave-size", "12"])
    assert train.resolve(args, reg)["data"]["image_size"] == 12
    args = train.parser(reg).parse_args(["--plugin", "image", "--out", "x", "--wave-size", "12", "--image-size", "8"])
    with pytest.raises(ConfigError, match="--image-size and --wave-size both set data.image_size"):
        train.resolve(args, reg)
    install(site, "clashing", FLAGS.replace("--wave-size", "--image-size"))
    with pytest.raises(PluginError, match="plugin 'clashing': layersync_add_flags: argument --image-size: "
                                          "conflicting option string"):
        train.parser(Registry())
