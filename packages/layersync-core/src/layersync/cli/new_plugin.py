"""layersync new-plugin NAME: write a working third-party plugin package to start from.

The template ships with core (``layersync/plugin_template/``): ``{{name}}`` in file contents
and path names becomes NAME, and a trailing ``.tmpl`` is dropped (it keeps the template's
own tests out of reach of test collectors in core's source tree).
"""

from __future__ import annotations

import re
import shutil
from importlib.resources import files
from pathlib import Path

from layersync import plugins
from layersync.errors import ConfigError

HELP = "create layersync-NAME/, a working plugin package (toy 1-D signal modality) to start from"
PLACEHOLDER = "{{name}}"
HIDDEN_SUFFIX = ".tmpl"
FIRST_PARTY = tuple(dist.removeprefix("layersync-") for dist in plugins.FIRST_PARTY)
VALID_NAME = re.compile(r"[a-z][a-z0-9_]*")


def check_name(name: str) -> None:
    if not VALID_NAME.fullmatch(name):
        raise ConfigError(f"plugin name '{name}' must be a lowercase Python identifier: a letter, then "
                          "letters, digits or _ (it names the module layersync_NAME)")
    if name in FIRST_PARTY:
        raise ConfigError(f"plugin name '{name}' is taken by a first-party plugin ({', '.join(FIRST_PARTY)})")


def template_files(folder=None, parts=()):
    """``(path parts, text)`` of every file of the template, in a stable order."""
    folder = folder if folder is not None else files("layersync") / "plugin_template"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
            continue
        if entry.is_dir():
            yield from template_files(entry, (*parts, entry.name))
        else:
            yield (*parts, entry.name), entry.read_text(encoding="utf-8")


def create(name: str, directory: Path) -> Path:
    """Render the template into ``directory/layersync-NAME`` and return that folder."""
    check_name(name)
    target = Path(directory) / f"layersync-{name}"
    try:
        target.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(f"{target} already exists: remove it or choose another --dir") from None
    except NotADirectoryError:
        raise ConfigError(f"cannot create {target}: a part of that path is a file") from None
    try:
        for parts, text in template_files():
            path = target.joinpath(*(part.replace(PLACEHOLDER, name).removesuffix(HIDDEN_SUFFIX) for part in parts))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.replace(PLACEHOLDER, name), encoding="utf-8")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def configure(parser) -> None:
    parser.add_argument("name", help="the plugin's name: lowercase letters, digits and _ "
                        "(makes layersync-NAME/ with the module layersync_NAME)")
    parser.add_argument("--dir", default=".", help="where to create layersync-NAME/ (default: the current folder)")


def run(args) -> int:
    target = create(args.name, Path(args.dir))
    print(f"created {target}; next:\n"
          f"  pip install -e {target}   (or uv pip install -e)\n"
          f"  layersync check-plugin {args.name}\n"
          f"  layersync-train --plugin {args.name} --out runs/{args.name}\n"
          f"  cd {target} && pytest   (its own tests; see its README.md)")
    return 0
