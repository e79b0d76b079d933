"""Neural collapse in networks trained with weight decay (Jacot et al., ICLR 2025).

The public names, importable from the package itself (`from wdcollapse import MetricMonitor`).
They load on first use, so `import wdcollapse.metrics` (or `metric_pass`) does not pull in
Lightning or Hydra. Two functions share their module's name and are imported from it:
`from wdcollapse.metric_pass import metric_pass` and `from wdcollapse.restore import restore`
(a package attribute of that name is the module once it is imported)."""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "MetricMonitor": "callbacks",
    "DivergenceGuard": "callbacks",
    "AtomicCheckpoint": "callbacks",
    "HookedNetwork": "interfaces",
    "LoaderData": "interfaces",
    "MeasuredNetwork": "interfaces",
    "MetricData": "interfaces",
    "load_runs": "runs",
    "load_run": "runs",
    "ArgumentError": "errors",
    "ConfigError": "errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wdcollapse' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
