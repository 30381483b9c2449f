"""Esper: morphogenetic neural networks on an event-sourced lifecycle engine.

The handful of names a script or notebook needs; everything else lives in its domain package.
"""

from esper._kernels import pin_cpu_kernels

pin_cpu_kernels()  # before anything computes with torch: see esper/_kernels.py

from esper.errors import BadInput, EsperError, RunFailed
from esper.kasmina import GrowableModel, build_host, grow
from esper.leyline import Advance, Cull, Germinate, LifecycleConfig, RunConfig, SeedStage, Wait
from esper.nissa.runstate import RunState
from esper.store import Recorder, Workspace
from esper.tolaria.fit import FitResult, fit
from esper.tolaria.loop import ListSink, RunResult, Session, StoreSink, execute, resolve_config

__all__ = [
    "Advance", "BadInput", "Cull", "EsperError", "FitResult", "Germinate", "GrowableModel", "LifecycleConfig",
    "ListSink", "Recorder", "RunConfig", "RunFailed", "RunResult", "RunState", "Session", "SeedStage", "StoreSink",
    "Wait", "Workspace", "build_host", "execute", "fit", "grow", "resolve_config",
]
