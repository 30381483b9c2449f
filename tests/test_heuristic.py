"""The heuristic gardener's rules, checked against its own decisions."""

from hypothesis import given, settings
from hypothesis import strategies as st

from esper.leyline import EpochEnded, Germinate, HeuristicConfig, RunConfig, RunStarted
from esper.tamiyo.controllers import idle_heuristic, make_controller
from esper.tamiyo.observation import ObservationProjection
from esper.tolaria.tasks import TASKS


def germinates_somewhere(knobs: HeuristicConfig, epochs: int) -> bool:
    """Whether the heuristic asks for a germination after any epoch of a run whose validation accuracy never
    moves (a plateau from the first epoch), every slot free."""
    projection = ObservationProjection()
    projection.apply(RunStarted(preset=TASKS["mnist1d"], config=RunConfig(epochs=epochs, heuristic=knobs),
                                host_params=1_000, slots=["early", "mid"], blueprints=["norm"]))
    controller = make_controller("heuristic", 0, heuristic=knobs)
    for epoch in range(1, epochs + 1):
        projection.apply(EpochEnded(epoch=epoch, train_loss=1.0, val_loss=1.0, val_accuracy=0.5, params=1_000))
        if isinstance(controller.decide(projection.observe()), Germinate):
            return True
    return False


@settings(max_examples=120, deadline=None)
@given(warmup=st.integers(0, 6), finish=st.integers(0, 10), epochs=st.integers(1, 20))
def test_a_run_is_called_too_short_to_grow_exactly_when_the_heuristic_germinates_nowhere_in_it(warmup, finish, epochs):
    knobs = HeuristicConfig(warmup_epochs=warmup, finish_epochs=finish)
    assert (idle_heuristic(knobs, epochs) is None) == germinates_somewhere(knobs, epochs)
