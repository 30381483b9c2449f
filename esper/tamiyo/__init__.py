"""Brain: controllers that read an observation (a projection of the log) and emit commands."""

from esper.tamiyo.controllers import CONTROLLERS, Controller, HeuristicController, make_controller
from esper.tamiyo.observation import Observation, ObservationProjection

__all__ = ["CONTROLLERS", "Controller", "HeuristicController", "Observation", "ObservationProjection", "make_controller"]
