"""The plugin manager: discovers plugins through the ``layersync`` entry points."""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass, field

import pluggy

from layersync import hookspecs

ENTRY_POINT_GROUP = "layersync"
CATEGORIES = ("modalities", "datasets", "tokenizers", "backbones", "evaluators", "weights")


@dataclass
class PluginInfo:
    """What ``layersync plugins`` reports for one plugin."""

    name: str
    version: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


class Registry:
    """Loads every plugin once and answers look-ups by category and name."""

    def __init__(self, entry_points=None):
        self.pm = pluggy.PluginManager("layersync")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._tables: dict[str, dict[str, tuple[str, object]]] = {c: {} for c in CATEGORIES}
        if entry_points is None:
            entry_points = md.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(entry_points, key=lambda e: e.name):
            self._load(ep)
        self.pm.check_pending()

    def _load(self, ep) -> None:
        version = ep.dist.version if getattr(ep, "dist", None) else "unknown"
        info = PluginInfo(ep.name, version)
        self.plugins.append(info)
        try:
            module = ep.load()
            self.pm.register(module, name=ep.name)
            for category in CATEGORIES:
                hook = getattr(self.pm.hook, f"layersync_{category}")
                impls = [i for i in hook.get_hookimpls() if i.plugin_name == ep.name]
                found = {}
                for impl in impls:
                    found.update(impl.function() or {})
                for name, value in found.items():
                    if name in self._tables[category]:
                        owner = self._tables[category][name][0]
                        raise ValueError(f"{category[:-1]} '{name}' is already provided by plugin '{owner}'")
                    self._tables[category][name] = (ep.name, value)
                if found:
                    info.provides[category] = sorted(found)
        except Exception as exc:  # a broken plugin must not take the others down
            if self.pm.has_plugin(ep.name):
                self.pm.unregister(name=ep.name)
            for table in self._tables.values():
                for key in [k for k, (owner, _) in table.items() if owner == ep.name]:
                    del table[key]
            info.provides = {}
            info.error = f"{type(exc).__name__}: {exc}"

    def names(self, category: str) -> list[str]:
        return sorted(self._tables[category])

    def failures(self) -> dict[str, str]:
        """``{plugin: error}`` of the plugins that failed to load."""
        return {p.name: p.error for p in self.plugins if p.error}

    def get(self, category: str, name: str):
        """Return the registered value or raise ``KeyError`` saying why it is not there:
        the plugin of that name failed to load (and how), or the known names."""
        try:
            return self._tables[category][name][1]
        except KeyError:
            failed = self.failures()
            if name in failed:
                raise KeyError(f"plugin '{name}' failed to load: {failed[name]}") from None
            what = "plugin" if category == "modalities" else category[:-1]
            known = ", ".join(self.names(category)) or "none installed"
            broken = "".join(f"; plugin '{n}' failed to load: {e}" for n, e in failed.items())
            raise KeyError(f"unknown {what} '{name}' (known: {known}){broken}") from None


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry
