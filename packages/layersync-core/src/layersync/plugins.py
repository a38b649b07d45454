"""The plugin manager: discovers plugins through the ``layersync`` entry points.

Loading is guarded per plugin: a plugin that fails to import (an exception, ``sys.exit``), implements
an unknown hook, was built for another plugin API or breaks the value contract of a hook is reported
as failed and the others load. Plugins load first-party first, then by entry-point name; an item
name that is taken already is refused for the newcomer alone (the rest of it loads) and stays
reachable as ``plugin:item``. A plugin that declares no ``LAYERSYNC_PLUGIN_API``, or has a function
named after a hook but not marked with ``@hookimpl``, loads with a warning (logged). Environment:
``LAYERSYNC_DISABLE_PLUGINS=a,b`` skips plugins, ``LAYERSYNC_TRACE_PLUGINS=1`` logs each plugin's import
and hook calls with their timings.

A factory registered as a ``"module:attribute"`` string is imported on its first look-up, so that listing
plugins imports none of their heavy dependencies; an import that fails is a PluginError naming the plugin,
the item and the module.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import os
import pkgutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pluggy

from layersync import hookspecs
from layersync.errors import PluginError
from layersync.interfaces import violation

ENTRY_POINT_GROUP = "layersync"
CATEGORIES = ("modalities", "datasets", "tokenizers", "backbones", "evaluators", "weights")
FIRST_PARTY = ("layersync-core", "layersync-image", "layersync-audio", "layersync-motion", "layersync-video",
               "layersync-diffusers")
# The version of what plugins build on (hookspecs, interfaces, layersync.nn, the names in
# layersync.__all__); a plugin states the one it was built for as LAYERSYNC_PLUGIN_API.
PLUGIN_API = 1
NO_API = f"declares no LAYERSYNC_PLUGIN_API; assuming it was built for API {PLUGIN_API}"
HOOKS = tuple(name for name in dir(hookspecs) if name.startswith("layersync_"))

log = logging.getLogger("layersync.plugins")


def singular(category: str) -> str:
    return "modality" if category == "modalities" else category[:-1]


@dataclass
class PluginInfo:
    """What ``layersync plugins`` reports for one plugin."""

    name: str
    version: str
    dist: str = "unknown"
    module: str = ""
    api: int | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)  # "hook: module.function" of each implementation
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    disabled: bool = False


def env_list(name: str) -> set[str]:
    return {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class Registry:
    """Loads every plugin once and answers look-ups by category and name (or ``plugin:name``)."""

    def __init__(self, entry_points=None, disabled: set[str] | None = None, trace: bool | None = None):
        self.pm = pluggy.PluginManager("layersync")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.trace = env_flag("LAYERSYNC_TRACE_PLUGINS") if trace is None else trace
        disabled = env_list("LAYERSYNC_DISABLE_PLUGINS") if disabled is None else disabled
        self._tables: dict[str, dict[str, str]] = {c: {} for c in CATEGORIES}  # category -> name -> its plugin
        self._own: dict[str, dict[str, dict[str, object]]] = {}  # plugin -> category -> its items
        if entry_points is None:
            entry_points = md.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(entry_points, key=_load_order):
            if ep.name in disabled:
                self.plugins.append(PluginInfo(ep.name, _dist_version(ep), _dist_name(ep), ep.value, disabled=True))
            else:
                self._load(ep)

    def _load(self, ep) -> None:
        info = PluginInfo(ep.name, _dist_version(ep), _dist_name(ep), ep.value)
        first = next((p for p in self.plugins if p.name == ep.name), None)
        self.plugins.append(info)
        if first is not None:  # the same entry-point name from a second distribution
            info.error = (f"entry point '{ep.name}' of {info.dist} is already taken by {first.dist}; "
                          f"this one is not loaded (rename the entry point or uninstall one of them)")
            return
        try:
            began = time.perf_counter()
            module = ep.load()
            self._traced(f"plugin '{ep.name}': imported {ep.value} in {_ms(began)}")
            info.api = getattr(module, "LAYERSYNC_PLUGIN_API", None)
            self._check_api(info)
            for name in unmarked_hooks(module):
                self._warn(info, f"function {name} is not marked with @layersync.hookimpl, so it is ignored "
                                 "(decorate it to contribute what it returns)")
            self.pm.register(module, name=ep.name)
            self._check_hooks(module)
            found = self._collect(ep.name, info)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) must not take the others down
            if self.pm.has_plugin(ep.name):
                self.pm.unregister(name=ep.name)
            info.provides, info.hooks = {}, []
            info.error = f"{type(exc).__name__}: {exc}"
            return
        self._own[ep.name] = found
        for category, items in found.items():
            table = self._tables[category]
            for name in items:
                if name in table:
                    self._warn(info, f"{singular(category)} '{name}' is already provided by plugin '{table[name]}': "
                                     f"refused here; use '{ep.name}:{name}' to choose this one")
                else:
                    table[name] = ep.name
            if items:
                info.provides[category] = sorted(items)

    def _warn(self, info: PluginInfo, text: str) -> None:
        """A problem that does not stop the plugin loading: listed by ``layersync plugins`` and logged (a
        training run's log shows it)."""
        info.warnings.append(text)
        log.warning("plugin '%s': %s", info.name, text)

    def _check_api(self, info: PluginInfo) -> None:
        if info.api is None:
            self._warn(info, NO_API)
        elif info.api != PLUGIN_API:
            newer = "upgrade layersync-core" if info.api > PLUGIN_API else f"upgrade {info.dist}"
            raise PluginAPIError(f"built for plugin API {info.api}, but layersync-core "
                                 f"{_core_version()} speaks API {PLUGIN_API} ({newer})")

    def _check_hooks(self, module) -> None:
        """Every hook the plugin implements must exist (pluggy checks this only for all plugins at once)."""
        for caller in self.pm.get_hookcallers(module) or []:
            if not caller.has_spec():
                raise pluggy.PluginValidationError(
                    module, f"unknown hook '{caller.name}' (known: {', '.join(HOOKS)})")

    def _collect(self, plugin: str, info: PluginInfo) -> dict[str, dict[str, object]]:
        """Call the plugin's hooks and check what they return: a mapping of names to valid values."""
        found: dict[str, dict[str, object]] = {}
        for category in CATEGORIES:
            hook = getattr(self.pm.hook, f"layersync_{category}")
            kind = singular(category) if category in ("modalities", "weights") else "factory"  # a violation kind
            for impl in hook.get_hookimpls():
                if impl.plugin_name != plugin:
                    continue
                info.hooks.append(f"{hook.name}: {impl.function.__module__}.{impl.function.__qualname__}")
                began = time.perf_counter()
                value = impl.function()
                self._traced(f"plugin '{plugin}': {hook.name}() in {_ms(began)}")
                if value is None:
                    continue
                if not isinstance(value, Mapping):
                    raise PluginContractError(f"{hook.name}() returned {type(value).__name__}; "
                                              f"expected a dict of name -> {violation(kind, None)}")
                for name, item in value.items():
                    if not isinstance(name, str) or not name or ":" in name:
                        raise PluginContractError(f"{hook.name}() returned the name {name!r}; "
                                                  f"expected a non-empty string without ':'")
                    rule = violation(kind, item)
                    if rule:
                        raise PluginContractError(f"{singular(category)} '{name}' is {type(item).__name__}; "
                                                  f"expected {rule}")
                found.setdefault(category, {}).update(value)
        return found

    def _traced(self, message: str) -> None:
        if self.trace:
            log.info("%s", message)

    def names(self, category: str) -> list[str]:
        return sorted(self._tables[category])

    def failures(self) -> dict[str, str]:
        """``{plugin: error}`` of the plugins that failed to load."""
        return {p.name: p.error for p in self.plugins if p.error}

    def owner(self, category: str, name: str) -> str:
        """The plugin whose item a name resolves to."""
        self.get(category, name)  # raises, saying why, if it resolves to none
        plugin, _, item = name.rpartition(":")
        return plugin or self._tables[category][item]

    def get(self, category: str, name: str):
        """Return the registered value (a ``"module:attribute"`` factory imported now) or raise ``KeyError``
        saying why it is not there: the plugin of that name failed to load (and how), or the known names."""
        plugin, _, item = name.rpartition(":")
        if not plugin:
            try:
                plugin = self._tables[category][name]
            except KeyError:
                raise KeyError(self._unknown(category, name)) from None
        if plugin not in self._own:
            raise KeyError(self._plugin_problem(plugin))
        items = self._own[plugin].get(category, {})
        if item not in items:
            known = ", ".join(sorted(items)) or "none"
            raise KeyError(f"plugin '{plugin}' provides no {singular(category)} '{item}' (its {category}: {known})")
        if isinstance(items[item], str):
            items[item] = self._import(plugin, f"{singular(category)} '{item}'", items[item])
        return items[item]

    def _import(self, plugin: str, what: str, reference: str):
        """The factory a ``"module:attribute"`` string names."""
        began = time.perf_counter()
        try:
            factory = pkgutil.resolve_name(reference)
        except Exception as exc:  # noqa: BLE001 - whatever the module raises, name who registered it
            raise PluginError(f"plugin '{plugin}': {what} is {reference}, which failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        self._traced(f"plugin '{plugin}': imported {reference} in {_ms(began)}")
        if not callable(factory):
            raise PluginError(f"plugin '{plugin}': {what} is {reference}, a {type(factory).__name__}; "
                              "expected a factory (a callable)")
        return factory

    def add_flags(self, parser, command: str) -> None:
        """The plugins' own flags of ``command`` (``layersync_add_flags``); a flag that is taken already is a
        PluginError naming the plugin."""
        for impl in self.pm.hook.layersync_add_flags.get_hookimpls():
            try:
                _call(impl, parser=parser, command=command)
            except argparse.ArgumentError as exc:
                raise PluginError(f"plugin '{impl.plugin_name}': layersync_add_flags: {exc}") from None

    def flag_config(self, args, command: str) -> list[tuple[str, str, object]]:
        """(flag, config key, value) of every plugin flag given (``layersync_flag_config``)."""
        return [setting for impl in self.pm.hook.layersync_flag_config.get_hookimpls()
                for setting in _call(impl, args=args, command=command) or []]

    def _plugin_problem(self, plugin: str) -> str:
        """Why a plugin of this name is not loaded."""
        info = next((p for p in self.plugins if p.name == plugin), None)
        if info is None:
            known = ", ".join(p.name for p in self.plugins) or "none installed"
            return f"no plugin '{plugin}' is installed (installed: {known})"
        if info.disabled:
            return f"plugin '{plugin}' is disabled by LAYERSYNC_DISABLE_PLUGINS"
        return f"plugin '{plugin}' failed to load: {info.error}"

    def _unknown(self, category: str, name: str) -> str:
        failed = self.failures()
        if name in failed or any(p.name == name and p.disabled for p in self.plugins):
            return self._plugin_problem(name)
        what = "plugin" if category == "modalities" else singular(category)
        known = ", ".join(self.names(category)) or "none installed"
        broken = "".join(f"; plugin '{n}' failed to load: {e}" for n, e in failed.items())
        return f"unknown {what} '{name}' (known: {known}){broken}"

    def modality_for(self, name: str) -> str:
        """What ``--plugin NAME`` means: a modality, or a plugin that provides exactly one modality."""
        if name in self._tables["modalities"] or ":" in name:
            self.get("modalities", name)
            return name
        if name in self._own:
            mine = sorted(self._own[name].get("modalities", {}))
            if len(mine) == 1:  # qualified when another plugin holds the plain name
                return mine[0] if self.owner("modalities", mine[0]) == name else f"{name}:{mine[0]}"
            listed = f"several modalities ({', '.join(mine)})" if mine else "no modality"
            raise KeyError(f"plugin '{name}' provides {listed}: give --plugin a modality "
                           f"({', '.join(self.names('modalities'))})")
        raise KeyError(self._unknown("modalities", name))


def unmarked_hooks(module) -> list[str]:
    """The module's functions named after a hook but not marked with ``@layersync.hookimpl`` (pluggy
    ignores them, silently)."""
    return [name for name in HOOKS
            if callable(getattr(module, name, None)) and not hasattr(getattr(module, name), "layersync_impl")]


def _call(impl, **kwargs):
    """A hook implementation called with the arguments it names (pluggy lets it take fewer than its spec)."""
    return impl.function(*(kwargs[name] for name in impl.argnames))


class PluginContractError(TypeError):
    """A hook returned something that breaks the plugin contract."""


class PluginAPIError(RuntimeError):
    """A plugin was built for another plugin API version."""


def _load_order(ep) -> tuple:
    return (_dist_name(ep) not in FIRST_PARTY, ep.name, _dist_name(ep))


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown"


def _dist_version(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "unknown"


def _core_version() -> str:
    try:
        return md.version("layersync-core")
    except md.PackageNotFoundError:
        return "(source tree)"


def _ms(began: float) -> str:
    return f"{(time.perf_counter() - began) * 1000:.1f} ms"


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry
