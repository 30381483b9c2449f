"""The heuristic gardener's rules, checked against its own decisions."""

from hypothesis import event, given, settings
from hypothesis import strategies as st
from tiers import examples

from esper.leyline import Advance, Cull, EpochEnded, Germinate, HeuristicConfig, RunConfig, RunStarted, SeedStage
from esper.leyline.garden import Garden
from esper.tamiyo.controllers import HeuristicController, idle_heuristic, make_controller
from esper.tamiyo.observation import Observation, ObservationProjection, SlotView
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


# ---- every decision, re-derived from the knobs' documented rules ------------------------------------------------
# Generated observations put each number on or beside the knob it is compared with (exact binary fractions, so that
# "equal" is equal), and the decision the gardener takes is compared with the one its knobs' docs describe.

SLOTS = ("early", "mid", "late")
BLUEPRINTS = ("conv_light", "conv_heavy", "norm")
LIVE = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING)


def near(value: int) -> st.SearchStrategy[int]:
    return st.sampled_from([max(value - 1, 0), value, value + 1])


@st.composite
def decisions(draw):
    """A heuristic config and an observation whose numbers sit on and beside its knobs."""
    cfg = HeuristicConfig(
        warmup_epochs=draw(st.integers(0, 3)), plateau_epochs=draw(st.integers(0, 3)),
        min_gain=draw(st.sampled_from([0.0, 0.25, 0.5])), max_live_seeds=draw(st.integers(0, 3)),
        finish_epochs=draw(st.integers(0, 4)), cull_contribution=draw(st.sampled_from([-0.25, 0.0, 0.25])),
        max_training_epochs=draw(st.integers(0, 3)), cull_penalty_epochs=draw(st.integers(0, 4)))
    epochs = draw(st.integers(1, 12))
    # Half the observations are quiet, nothing to cull or advance, at an epoch on an edge of the germination window,
    # so that the germination's rules decide
    quiet = draw(st.booleans())
    edges = [cfg.warmup_epochs - 1, cfg.warmup_epochs, epochs - cfg.finish_epochs, epochs - cfg.finish_epochs + 1,
             3, 4]  # the first epochs whose gain over two epochs is known
    epoch = draw(st.sampled_from([min(max(e, 0), epochs) for e in edges]) if quiet else st.integers(0, epochs))
    stages = [SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.EMBARGOED, SeedStage.GERMINATED, SeedStage.BLENDING] \
        if quiet else [SeedStage.DORMANT, *LIVE, SeedStage.EMBARGOED]
    views = []
    for slot in SLOTS:
        stage = draw(st.sampled_from(stages))
        views.append(SlotView(
            slot=slot, seed_id=None if stage is SeedStage.DORMANT else f"s-{slot}", stage=stage,
            blueprint=None if stage is SeedStage.DORMANT else draw(st.sampled_from(BLUEPRINTS)),
            alpha=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])), epochs_in_stage=draw(near(cfg.max_training_epochs)),
            gradient_health=1.0, contribution=None if quiet else draw(st.sampled_from(
                [None, cfg.cull_contribution - 0.25, cfg.cull_contribution, cfg.cull_contribution,
                 cfg.cull_contribution + 0.25])),
            gate_open=not quiet and stage in (SeedStage.TRAINING, SeedStage.BLENDING) and draw(st.booleans()),
            fossilized=draw(st.integers(0, 2))))
    history = tuple(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75]), min_size=epoch, max_size=epoch)))
    culled = {bp: epoch - draw(near(cfg.cull_penalty_epochs)) for bp in BLUEPRINTS if draw(st.integers(0, 2)) == 0}
    return cfg, observation(cfg, epochs, views, history, draw(near(cfg.plateau_epochs)), culled)


def observation(cfg: HeuristicConfig, epochs: int, views: list[SlotView], history: tuple[float, ...], plateau: int,
                culled: dict[str, int]) -> Observation:
    """What the gardener sees after epoch `len(history)`."""
    garden = Garden()  # no seeds: every germination legal, rotation from the first blueprint
    garden.apply(RunStarted(preset=TASKS["mnist1d"], config=RunConfig(epochs=epochs, heuristic=cfg),
                            host_params=1_000, slots=list(SLOTS), blueprints=list(BLUEPRINTS)))
    return Observation(epoch=len(history), epochs=epochs, val_accuracy=history[-1] if history else 0.0,
                       best_val_accuracy=max(history, default=0.0), accuracy_history=history, train_loss=1.0,
                       val_loss=1.0, plateau=plateau, params=1_000, host_params=1_000, slots=tuple(views),
                       blueprints=BLUEPRINTS, culled_recently=culled, garden=garden)


def expected(cfg: HeuristicConfig, obs: Observation):
    """What HeuristicConfig's docs say: culls first (a blending seed at α ≥ 0.5 below `cull_contribution`, a training
    seed whose gate stayed shut `max_training_epochs`), then an open gate, then a germination in the free slot that
    has fossilized least, of the next blueprint not culled within `cull_penalty_epochs`."""
    for view in obs.slots:
        if view.stage is SeedStage.BLENDING and view.alpha >= 0.5 and view.contribution is not None \
                and view.contribution < cfg.cull_contribution:
            return ("cull", view.seed_id)
        if view.stage is SeedStage.TRAINING and not view.gate_open and view.epochs_in_stage >= cfg.max_training_epochs:
            return ("cull", view.seed_id)
    if opened := [view.seed_id for view in obs.slots if view.gate_open]:
        return ("advance", opened[0])
    history = obs.accuracy_history
    gain = history[-1] - history[-3] if len(history) >= 3 else 0.0
    stalled = obs.plateau >= cfg.plateau_epochs or gain < cfg.min_gain
    live = sum(view.stage in LIVE for view in obs.slots)
    free = [view for view in obs.slots if view.seed_id is None]
    if obs.epoch < cfg.warmup_epochs or live >= cfg.max_live_seeds or obs.epochs - obs.epoch < cfg.finish_epochs \
            or not stalled or not free:
        return ("wait",)
    slot = sorted(free, key=lambda view: view.fossilized)[0].slot  # a stable sort: the first of the least grown
    fresh = [bp for bp in BLUEPRINTS if obs.epoch - obs.culled_recently.get(bp, -10**6) >= cfg.cull_penalty_epochs]
    return ("germinate", slot, fresh[0]) if fresh else ("wait",)


def taken(command):
    if isinstance(command, Cull):
        return ("cull", command.seed_id)
    if isinstance(command, Advance):
        return ("advance", command.seed_id)
    if isinstance(command, Germinate):
        return ("germinate", command.slot, command.blueprint)
    return ("wait",)


@settings(max_examples=examples(1000), deadline=None)
@given(decisions())
def test_every_decision_is_the_one_the_knobs_describe(case):
    cfg, obs = case
    decision = taken(HeuristicController(cfg).decide(obs))
    event(decision[0])  # each kind of decision is reached (--hypothesis-show-statistics)
    assert decision == expected(cfg, obs)


def test_the_gain_over_two_epochs_counts_from_the_third_epoch_on():
    """Before three epochs are measured no gain is known and the gardener germinates once warmed up (HeuristicConfig
    .min_gain); from the third on, accuracy rising by `min_gain` or more over two epochs holds it back."""
    cfg = HeuristicConfig(warmup_epochs=0, plateau_epochs=1, min_gain=0.5, finish_epochs=0)
    empty = [SlotView(slot=slot, seed_id=None, stage=SeedStage.DORMANT, blueprint=None, alpha=0.0, epochs_in_stage=0,
                      gradient_health=1.0, contribution=None, gate_open=False, fossilized=0) for slot in SLOTS]
    decide = HeuristicController(cfg).decide
    assert taken(decide(observation(cfg, 10, empty, (0.0, 0.25), 0, {}))) == ("germinate", "early", "conv_light")
    assert taken(decide(observation(cfg, 10, empty, (0.0, 0.25, 0.75), 0, {}))) == ("wait",)
