"""Esper: morphogenetic neural networks on an event-sourced lifecycle engine.

The handful of names a script or notebook needs; everything else lives in its domain package. They are
imported when first used (`esper.RunConfig` loads what it needs, no more), so that `import esper.leyline`, the
contracts, loads neither torch nor duckdb.
"""

import importlib
from typing import Any

from esper._kernels import pin_cpu_kernels

pin_cpu_kernels()  # before anything computes with torch: see esper/_kernels.py

_HOMES = {
    "esper.errors": ("BadInput", "EsperError", "RunFailed"),
    "esper.kasmina": ("GrowableModel", "build_host", "grow"),
    "esper.leyline": ("Advance", "Cull", "Germinate", "LifecycleConfig", "RunConfig", "SeedStage", "Wait"),
    "esper.nissa.runstate": ("RunState",),
    "esper.store": ("Recorder", "Workspace"),
    "esper.tolaria.fit": ("FitResult", "fit"),
    "esper.tolaria.loop": ("ListSink", "RunResult", "Session", "StoreSink", "execute", "resolve_config"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_HOME_OF)


def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module 'esper' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME_OF[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
