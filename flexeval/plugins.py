"""Plugins: benchmarks and models from other installed packages, found through entry points.

A package declares, in its pyproject.toml,

    [project.entry-points."flexeval.benchmarks"]
    my_bench = "my_package.bench:MyBench"      # a Benchmark subclass (or an instance)
    [project.entry-points."flexeval.models"]
    my_model = "my_package.model:load"         # load(model: str, device: str, dtype: str) -> model

and, once installed, `flexeval run --bench my_bench` and `flexeval run --model-kind my_model
--model WHATEVER` use them; `flexeval list` shows them with the distribution they come from.

A plugin model answers the two request kinds (flexeval/requests.py) on lists of (request, image):
`generate(batch) -> list[str]` and `choose(batch) -> list[list[float]]` (each option's mean NLL);
`image` is the decoded PIL image, or what the model's optional `preprocess(image)` returns. An
optional `identity() -> dict` says what makes two of its runs comparable (default: its name,
distribution version and the --model string); resume keys include it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flexeval.errors import FlexEvalError

BENCHMARK_GROUP = "flexeval.benchmarks"
MODEL_GROUP = "flexeval.models"


@dataclass(frozen=True)
class Plugin:
    group: str
    name: str
    value: str  # "module:attr"
    distribution: str  # "name version", or "?" when the entry point has no distribution
    entry: Any = field(compare=False, repr=False)

    @property
    def source(self) -> str:
        return f"plugin {self.distribution} ({self.value})"

    def load(self) -> Any:
        try:
            return self.entry.load()
        except Exception as e:  # an import error inside the plugin: name the plugin and its package
            raise FlexEvalError(f"{self.group} plugin '{self.name}' from {self.distribution} cannot be loaded "
                                f"({type(e).__name__}: {e}); fix or reinstall that package") from e


def plugins(group: str) -> list[Plugin]:
    """Every installed entry point of `group`, by name (read afresh: a package installed meanwhile shows up)."""
    found = []
    for ep in metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        where = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "?"
        found.append(Plugin(group, ep.name, ep.value, where, ep))
    return sorted(found, key=lambda p: p.name)


def find_plugin(group: str, name: str) -> Plugin | None:
    key = name.strip().lower().replace("-", "_")
    return next((p for p in plugins(group) if p.name.lower().replace("-", "_") == key), None)


def plugin_benchmark(plugin: Plugin):
    """The plugin's Benchmark instance (a class is instantiated), named after the entry point if it has no name."""
    from flexeval.benchmarks.base import Benchmark

    obj = plugin.load()
    bench = obj() if isinstance(obj, type) else obj
    if not isinstance(bench, Benchmark):
        raise FlexEvalError(f"benchmark plugin '{plugin.name}' from {plugin.distribution} gives a "
                            f"{type(bench).__name__}, not a flexeval.benchmarks.base.Benchmark (sub)class or instance")
    if not bench.name:
        bench.name = plugin.name
    bench.plugin_source = plugin.source
    return bench


# ---- models ----

def model_plugin(kind: str | None) -> Plugin | None:
    """The `flexeval.models` plugin that --model-kind names (None for the built-in kinds)."""
    if not kind or kind in ("auto", "flexattention", "hf"):
        return None
    plugin = find_plugin(MODEL_GROUP, kind)
    if plugin is None:
        known = ", ".join(p.name for p in plugins(MODEL_GROUP)) or "none installed"
        raise FlexEvalError(f"--model-kind {kind}: no such kind; choose auto, flexattention, hf or a model plugin "
                            f"({known})")
    return plugin


@dataclass
class _Generated:
    text: str
    token_ids: list = field(default_factory=list)
    n_prompt_tokens: int | None = None
    hd_selected_ratio: float | None = None


@dataclass
class _Chosen:
    option_nll: list
    n_prompt_tokens: int | None = None
    hd_selected_ratio: float | None = None


class PluginModel:
    """A plugin's model with what the execution core and run.json read from a model."""

    def __init__(self, plugin: Plugin, inner: Any, model: str, device: str, dtype: str):
        self.plugin, self.inner, self.model_arg = plugin, inner, model
        self.kind, self.recipe, self.source = f"plugin:{plugin.name}", "plugin", model
        self.folder = str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else "."
        self.device = getattr(inner, "device", device if device != "auto" else "cpu")
        self.dtype = getattr(inner, "dtype", dtype)
        self.options = None
        self.cfg = SimpleNamespace(has_hd=False, format=f"plugin:{plugin.name}",
                                   to_dict=lambda: {"plugin": plugin.name, "value": plugin.value})

    def preprocessor(self, image, image_mode: str = "pad"):
        prep = getattr(self.inner, "preprocess", None)
        return prep(image) if prep is not None else image.convert("RGB")

    def generate(self, batch: list) -> list[_Generated]:
        return [r if hasattr(r, "text") else _Generated(str(r)) for r in self.inner.generate(batch)]

    def choose(self, batch: list) -> list[_Chosen]:
        return [r if hasattr(r, "option_nll") else _Chosen([float(x) for x in r]) for r in self.inner.choose(batch)]

    def identity(self) -> dict:
        own = self.inner.identity() if hasattr(self.inner, "identity") else {}
        return {"plugin": self.plugin.name, "distribution": self.plugin.distribution, "model": self.model_arg,
                "dtype": str(self.dtype), **own}

    def tag_parts(self) -> list[str]:
        return []


def load_plugin_model(plugin: Plugin, model: str, device: str = "auto", dtype: str = "auto") -> PluginModel:
    factory = plugin.load()
    try:
        inner = factory(model, device, dtype)
    except FlexEvalError:
        raise
    except Exception as e:
        raise FlexEvalError(f"model plugin '{plugin.name}' from {plugin.distribution} failed to load {model!r} "
                            f"({type(e).__name__}: {e})") from e
    return PluginModel(plugin, inner, model, device, dtype)


# ---- `flexeval list` ----

def plugins_listing() -> str:
    """The lines `flexeval list` adds: the named benchmarks outside `all`, and every plugin with its package."""
    from flexeval.benchmarks.registry import extra_benchmarks

    lines = ["", "more benchmarks (not in --bench all; also: --bench path/to/file.tsv | file.jsonl):"]
    for bench, source in extra_benchmarks():
        lines.append(f"  {bench.name:<16} protocols {','.join(bench.protocols):<20} {source}")
    models = plugins(MODEL_GROUP)
    lines.append("model plugins (--model-kind NAME):" + ("" if models else " none installed"))
    lines += [f"  {p.name:<16} {p.source}" for p in models]
    return "\n".join(lines)
