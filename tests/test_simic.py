"""Simic: masks, the log projection both learners read, the vectorized environment, PPO and IQL updates."""

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import hypothesis.strategies as st
import msgspec
import numpy as np
import pytest
import torch
from fake_runs import plan_run
from hypothesis import given, settings

from esper.errors import BadInput, EsperError, Terminated
from esper.leyline import Advance, Cull, EpochEnded, Germinate, LifecycleConfig, RunConfig, RunStarted, SeedTelemetry, Wait
from esper.leyline.events import CommandIssued, SeedGerminated, SeedTransitioned, encode
from esper.leyline.garden import Garden, legal_commands
from esper.leyline.stages import SeedStage
from esper.nissa.runstate import RunState
from esper.simic import features as F
from esper.simic.dataset import Episode, replay_episode
from esper.simic.env import VecEnv, play
from esper.simic.iql import IQLConfig, expectile_loss
from esper.simic.iql import train as train_iql
from esper.simic.policy import PolicyController, PolicyNet, load_policy, load_policy_controller, save_policy
from esper.simic.ppo import (
    PPOConfig, advantages, centre_per_step, greedy_score, make_net, ppo_loss, read_batch, selection_seed, update,
)
from esper.simic.rollout import Players, collect, episode_generators
from esper.simic import ppo
from esper.simic.ppo import train as train_ppo
from esper.simic.rewards import COMPONENTS, RewardConfig, StepOutcome, components
from esper.store import Recorder, Workspace
from esper.tamiyo.controllers import make_controller
from esper.tamiyo.observation import ObservationProjection
from esper.tolaria.data import augment, load_task_data
from esper.tolaria.tasks import BLUEPRINTS, get_task
from esper.tolaria.trainer import Trainer
from esper.tolaria.loop import ListSink, StoreSink, execute, resolve_config
from esper.tolaria.verify import verify_run
from esper.tolaria.tasks import TASKS

pytestmark = pytest.mark.slow  # real training runs or subprocesses of the CLI

MNIST1D = TASKS["mnist1d"]

SPEC = F.spec_for_task("mnist1d")


@pytest.fixture(scope="module")
def data():
    return load_task_data("mnist1d", 42)


# ---- masks ---------------------------------------------------------------------------------------

LIFECYCLE = LifecycleConfig(min_training_epochs=1, gradient_health_threshold=0.5, blend_epochs=2,
                            stability_window=1, regression_tolerance=0.05, embargo_epochs=2)
epoch_story = st.lists(
    st.tuples(
        st.integers(0, 10_000),  # which candidate command
        st.floats(0.0, 1.0),  # validation accuracy
        st.floats(0.0, 1.0),  # gradient health of every live seed
        st.floats(0.0, 2.0),  # seed loss
        st.floats(-0.2, 0.2),  # contribution
    ),
    max_size=25,
)


def candidates(garden: Garden) -> list:
    """Legal and illegal commands alike: every germination, and advance/cull of every seed ever."""
    out = [Wait()] + [Germinate(slot=s, blueprint=b) for s in garden.slots for b in garden.blueprints]
    for seed_id in garden.seeds:
        out += [Advance(seed_id=seed_id), Cull(seed_id=seed_id)]
    return out


def masked_actions(mask: F.ActionMask):
    """Every factored action the masks let through."""
    for op in np.flatnonzero(mask.op):
        slots = np.flatnonzero(mask.slot[op]) if op != F.WAIT else [0]
        for slot in slots:
            bps = np.flatnonzero(mask.blueprint[slot]) if op == F.GERMINATE else [0]
            for bp in bps:
                yield int(op), int(slot), int(bp)


def key(command) -> tuple:
    return (type(command).__name__, getattr(command, "slot", None), getattr(command, "blueprint", None),
            getattr(command, "seed_id", None))


HOST_PARAMS = 1258
SEED_SIZES = {slot: {b: 16 + 700 * j for j, b in enumerate(SPEC.blueprints)} for slot in SPEC.slots}


def realized(event):
    """A germination as the trainer reports it: with the seed's parameter count."""
    if isinstance(event, SeedGerminated):
        return msgspec.structs.replace(event, params=SEED_SIZES[event.slot][event.blueprint])
    return event


@settings(max_examples=150, deadline=None)
@given(epoch_story, st.sampled_from([0, HOST_PARAMS, 2000, 3500]))
def test_masks_allow_exactly_the_legal_commands(story, max_params):
    """... and with a `max_params` cap the model never outgrows it, whatever is germinated or culled."""
    garden = Garden()
    lifecycle = msgspec.structs.replace(LIFECYCLE, max_params=max_params)
    garden.apply(RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=lifecycle), slots=list(SPEC.slots), blueprints=list(SPEC.blueprints),
                            host_params=HOST_PARAMS, seed_sizes=SEED_SIZES))
    for epoch, (pick, acc, health, loss, contribution) in enumerate(story, start=1):
        for event in garden.tick(epoch):
            garden.apply(event)
        alive = [s for s in garden.seeds.values() if s.stage.value in ("GERMINATED", "TRAINING", "BLENDING")]
        telemetry = [SeedTelemetry(seed_id=s.seed_id, alpha=min(1.0, s.epochs_in_stage / 2) if s.stage.value == "BLENDING" else 0.0,
                                   gradient_health=health, seed_loss=loss - 0.1 * s.epochs_in_stage,
                                   contribution=contribution) for s in alive]
        garden.apply(EpochEnded(epoch=epoch, train_loss=1.0, val_loss=1.0, val_accuracy=acc, params=100, seeds=telemetry))

        mask = F.action_mask(garden, SPEC)
        allowed = [F.to_command(*a, garden, SPEC) for a in masked_actions(mask)]
        assert all(garden.legal(c) for c in allowed), "a mask let an illegal command through"
        assert sorted(map(key, allowed)) == sorted(map(key, legal_commands(garden))), "a legal command is masked"
        joint = F.joint_mask(mask, SPEC)
        assert sorted(F.joint_index(*a, SPEC) for a in masked_actions(mask)) == list(np.flatnonzero(joint))
        assert F.ActionMask.from_log(mask.to_log(SPEC), SPEC).flat().tolist() == mask.flat().tolist()

        options = candidates(garden)
        for spec in (SPEC, NARROW):
            for command in options:
                assert_read_back_as_an_action(command, garden, spec)
            masked = set(masked_actions(F.action_mask(garden, spec)))
            assert masked == {F.from_command(c, garden, spec) for c in legal_commands(garden)}
        command = options[pick % len(options)]
        for event in garden.handle(command, epoch):
            garden.apply(realized(event))
        assert not max_params or garden.params() <= max_params


NARROW = F.FeatureSpec(slots=SPEC.slots[1:], blueprints=SPEC.blueprints[:2])
"""A policy that knows fewer slots and blueprints than the runs it reads."""


def assert_read_back_as_an_action(command, garden: Garden, spec: F.FeatureSpec) -> None:
    """A logged command becomes the action that issues it again, if it was legal and `spec` can name it; else `wait`
    (it changed nothing, or the policy has no head for it)."""
    action = F.from_command(command, garden, spec)
    slot = command.slot if isinstance(command, Germinate) else None
    if isinstance(command, (Advance, Cull)):
        slot = garden.seeds[command.seed_id].slot
    nameable = slot in spec.slots and getattr(command, "blueprint", spec.blueprints[0]) in spec.blueprints
    if isinstance(command, Wait) or not garden.legal(command) or not nameable:
        assert action == (F.WAIT, 0, 0), (command, action)
        return
    assert key(F.to_command(*action, garden, spec)) == key(command)


def test_sampling_never_picks_a_masked_choice():
    torch.manual_seed(0)
    net = PolicyNet(SPEC)
    with torch.no_grad():  # make the heads opinionated, so masking (not luck) keeps the choices legal
        for head in (net.op_head, net.slot_head, net.blueprint_head):
            head.weight.normal_(0, 3.0)
    rng = np.random.default_rng(0)
    masks = rng.random((512, SPEC.mask_dim)) < 0.4
    masks[:, F.WAIT] = True
    obs = torch.randn(512, SPEC.obs_dim)
    action, log_prob, _ = net.act(obs, torch.from_numpy(masks), generator=torch.Generator().manual_seed(1))
    for row, (op, slot, bp) in zip(masks, action.tolist()):
        m = F.ActionMask.unflat(row, SPEC)
        assert m.op[op]
        assert (slot == 0 and not m.slot[op].any()) or m.slot[op, slot]
        assert (bp == 0 and (op != F.GERMINATE or not m.blueprint[slot].any())) or (op == F.GERMINATE and m.blueprint[slot, bp])
    assert torch.isfinite(log_prob).all()


def test_an_observation_encodes_each_slot_in_its_own_block():
    """The vector a policy reads: run-level features, then one block per slot of the spec, in the spec's order, each
    with its stage, whether a seed is there, and its blueprint, one-hot."""
    projection = ObservationProjection()
    projection.apply(RunStarted(preset=MNIST1D, config=RunConfig(lifecycle=LIFECYCLE, epochs=10), slots=list(SPEC.slots),
                                blueprints=list(SPEC.blueprints), host_params=HOST_PARAMS, seed_sizes=SEED_SIZES))
    projection.apply(EpochEnded(epoch=1, train_loss=1.0, val_loss=1.0, val_accuracy=0.50, params=HOST_PARAMS))
    germinate = Germinate(slot=SPEC.slots[1], blueprint=SPEC.blueprints[2])
    for event in projection.garden.handle(germinate, 1):
        projection.apply(realized(event))
    seed = projection.garden.live_seed(germinate.slot)
    projection.apply(EpochEnded(epoch=2, train_loss=1.0, val_loss=1.0, val_accuracy=0.52, params=HOST_PARAMS,
                                seeds=[SeedTelemetry(seed_id=seed.seed_id, gradient_health=0.75)]))
    observation = projection.observe()
    vector = F.encode(observation, SPEC)

    assert vector.shape == (SPEC.obs_dim,) and vector.dtype == np.float32
    run, deltas = vector[:10], vector[10 : 10 + SPEC.history]
    assert run[0] == pytest.approx(0.2) and run[2] == pytest.approx(0.52)  # epoch 2 of 10; validation accuracy
    assert run[9] == pytest.approx(1 / SPEC.n_slots)  # one slot of three holds a live seed
    assert deltas[-1] == pytest.approx(0.2) and not deltas[:-1].any()  # the one change so far, the latest last
    blocks = vector[10 + SPEC.history :].reshape(SPEC.n_slots, -1)
    stages, present, blueprints = blocks[:, : len(F.STAGES)], blocks[:, len(F.STAGES) + 8], blocks[:, -SPEC.n_blueprints :]
    assert stages.argmax(axis=1).tolist() == [F.STAGES.index(s) for s in
                                              (SeedStage.DORMANT, SeedStage.GERMINATED, SeedStage.DORMANT)]
    assert (stages.sum(axis=1) == 1).all()
    assert present.tolist() == [0, 1, 0] and blocks[1, len(F.STAGES) + 2] == pytest.approx(0.75)  # gradient health
    assert blueprints.tolist() == [[0] * SPEC.n_blueprints, [float(i == 2) for i in range(SPEC.n_blueprints)],
                                   [0] * SPEC.n_blueprints]
    seed_size = blocks[:, len(F.STAGES) + 7]
    assert seed_size[1] > 0 and seed_size[[0, 2]].tolist() == [0, 0]
    wider = F.FeatureSpec(slots=(*SPEC.slots, "unseen"), blueprints=SPEC.blueprints)  # a slot this run lacks: zeros
    wide = F.encode(observation, wider)[10 + SPEC.history :]
    assert wide.tolist() == blocks.ravel().tolist() + [0.0] * blocks.shape[1]


# ---- the log: observations, episodes, batches ------------------------------------------------------


class Recording:
    """A controller that remembers what it saw."""

    def __init__(self, inner):
        self.inner, self.name, self.seen = inner, inner.name, []

    def decide(self, obs):
        self.seen.append((obs, F.encode(obs, SPEC), F.action_mask(obs.garden, SPEC).flat()))
        return self.inner.decide(obs)


@pytest.mark.parametrize("controller", ["random", "heuristic"])
def test_observations_rebuilt_from_the_log_equal_the_live_ones(controller, data):
    config = resolve_config(RunConfig(controller=controller, epochs=8, seed=5))
    recording = Recording(make_controller(controller, 5))
    with Recorder(":memory:") as recorder:
        execute(config, recording, StoreSink(recorder, "run"), data=data)
        episode = replay_episode(recorder.read("run"), SPEC, RewardConfig(), "run")
    assert len(episode) == len(recording.seen) == 8
    assert episode.observations == [obs for obs, _, _ in recording.seen]
    assert np.array_equal(episode.obs, np.stack([x for _, x, _ in recording.seen]))
    assert np.array_equal(episode.mask, np.stack([m for _, _, m in recording.seen]))
    assert np.array_equal(episode.next_obs[:-1], episode.obs[1:]) and not episode.next_obs[-1].any()
    assert episode.done.tolist() == [False] * 7 + [True]


def test_lockstep_changes_no_event(data):
    """n runs in lock-step write exactly the events each writes alone (so every episode re-executes)."""
    config = resolve_config(RunConfig(controller="test", epochs=6, seed=2))
    names = ["heuristic", "random", "random"]
    sinks = [ListSink() for _ in names]
    play(VecEnv([config] * 3, sinks, data), [make_controller(n, i) for i, n in enumerate(names)])
    for i, (name, sink) in enumerate(zip(names, sinks)):
        alone = ListSink()
        execute(config, make_controller(name, i), alone, data=data)
        assert [encode(e) for e in sink.events] == [encode(e) for e in alone.events]


def test_an_interrupted_lockstep_play_ends_every_unfinished_run_with_run_failed(data):
    """Ctrl-C (or SIGTERM) during lock-step: as with one run, each log keeps its whole epochs and ends with
    `RunFailed`, and a run that had already finished keeps its `RunFinished`."""
    class InterruptsAtEpoch3:
        name = "heuristic"

        def __init__(self):
            self.inner = make_controller("heuristic", 0)

        def decide(self, obs):
            if obs.epoch == 3:
                raise KeyboardInterrupt
            return self.inner.decide(obs)

    config = resolve_config(RunConfig(controller="test", epochs=5, seed=2))
    sinks = [ListSink() for _ in range(3)]
    vec = VecEnv([config] * 3, sinks, data)
    with pytest.raises(KeyboardInterrupt):
        play(vec, [make_controller("heuristic", 0), InterruptsAtEpoch3(), make_controller("heuristic", 0)])
    for sink in sinks:
        types = [type(e).__name__ for e in sink.events]
        assert types[-1] == "RunFailed" and sink.events[-1].error == "interrupted"
        assert types.count("EpochEnded") == types.count("CommandIssued") == 2, types

    finished = ListSink()
    vec = VecEnv([resolve_config(RunConfig(controller="test", epochs=2, seed=2))], [finished], data)
    with pytest.raises(KeyboardInterrupt), vec:
        play(vec, [make_controller("heuristic", 0)])
        raise KeyboardInterrupt
    assert [type(e).__name__ for e in finished.events][-1] == "RunFinished"


@pytest.mark.parametrize("blueprint", BLUEPRINTS)
def test_a_training_step_draws_nothing_from_the_global_generator(blueprint, data):
    """Lock-step swaps only the CPU generator around a run's turn, and on GPU the runs share the CUDA one:
    a training step, with a seed of any blueprint training or blending, must draw from the run's own
    generator alone (the same code that would draw from the CUDA generator there draws from the CPU one here)."""
    config = resolve_config(RunConfig(epochs=4, seed=3))
    trainer = Trainer(config, get_task(config.task), data)
    slot = trainer.model.slot_names[0]
    size = trainer.model.seed_sizes()[slot][blueprint]
    trainer.realize(SeedGerminated(epoch=1, seed_id="s", slot=slot, blueprint=blueprint, params=size))
    trainer.realize(SeedTransitioned(epoch=1, seed_id="s", slot=slot, from_stage="DORMANT", to_stage="GERMINATED",
                                     trigger="germinate"))
    batches = trainer.data.batches("train", 32, trainer.generator)
    for before_stage, stage, trigger in (("GERMINATED", "TRAINING", "start_training"), ("TRAINING", "BLENDING", "advance")):
        trainer.realize(SeedTransitioned(epoch=1, seed_id="s", slot=slot, from_stage=before_stage, to_stage=stage,
                                         trigger=trigger))
        trainer.begin_epoch(1)
        before = torch.get_rng_state()
        for _ in range(2):
            trainer.train_step(*next(batches))
        assert torch.equal(before, torch.get_rng_state()), f"a step with a {stage.lower()} {blueprint} seed drew from it"
    images = torch.rand(4, 3, 8, 8)
    before = torch.get_rng_state()
    augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state()), "augmentation drew from the global generator"


@pytest.fixture(scope="module")
def played(data):
    """Two PPO episodes of 4 epochs with a fresh policy, played in lock-step into an in-memory store."""
    net = make_net(SPEC, 64, seed=3)
    config = resolve_config(RunConfig(controller="ppo", epochs=4, seed=1000, telemetry="minimal"))
    recorder = Recorder(":memory:")
    run_ids = ["e0", "e1"]
    vec = VecEnv([config] * 2, [StoreSink(recorder, r) for r in run_ids], data)
    rewards = RewardConfig(accuracy=1.0, contribution=0.7, params=0.3, terminal=0.5)
    live = collect(vec, net, episode_generators(0, 0, range(2)))
    episodes, batch = read_batch([(r, recorder.read(r)) for r in run_ids], SPEC, rewards)
    yield net, recorder, run_ids, live, episodes, batch
    recorder.close()


def test_ppo_batch_rebuilt_from_the_log_equals_the_live_rollout(played):
    _, _, _, live, episodes, batch = played
    flat = lambda per_env: np.concatenate([np.asarray(v) for v in per_env])  # noqa: E731
    assert np.array_equal(batch["obs"].numpy(), flat(live.obs))
    assert np.array_equal(batch["mask"].numpy(), flat(live.mask))
    assert np.array_equal(batch["action"].numpy(), flat(live.action))
    assert np.array_equal(batch["log_prob"].numpy(), flat(live.log_prob).astype(np.float32))
    assert np.array_equal(batch["value"].numpy(), flat(live.value).astype(np.float32))
    assert batch["done"].sum() == 2 and len(batch["reward"]) == 8


def test_a_ppo_episode_replays_and_reexecutes(played):
    _, recorder, run_ids, _, _, _ = played
    recorded = recorder.read(run_ids[1])
    state = RunState.fold(recorded)
    assert state.status == "finished" and state.commands == 4
    issued = [r.event for r in recorded if isinstance(r.event, CommandIssued)]
    assert all(e.log_prob is not None and e.value is not None and e.mask for e in issued)
    assert verify_run(recorded).events == len(recorded)


def test_rewards_telescope_to_final_accuracy_and_param_cost(played):
    _, _, _, _, episodes, _ = played
    for e in episodes:
        first = e.observations[0]
        acc, params, terminal = (e.components[:, i].sum() for i in (0, 2, 3))
        assert acc == pytest.approx(e.final_val_accuracy - first.val_accuracy, abs=1e-6)
        assert params == pytest.approx(-math.log(e.final_params / first.host_params), abs=1e-5)
        assert terminal == pytest.approx(e.final_val_accuracy, abs=1e-6)


def test_a_fossilizing_step_is_credited_the_seed_s_last_measured_contribution_once():
    events = [e for batch in plan_run("heuristic") for e in batch]  # fossilizes s1-mid (tests/fake_runs.py)
    episode = replay_episode(events, F.spec_for_run(events[0]))
    (joined,) = [e for e in events if isinstance(e, SeedTransitioned) and e.to_stage == "FOSSILIZED"]
    last = [t.contribution for e in events if isinstance(e, EpochEnded) and e.epoch <= joined.epoch
            for t in e.seeds if t.seed_id == joined.seed_id][-1]
    credited = episode.components[:, COMPONENTS.index("contribution")]
    step = joined.epoch - 1  # one decision an epoch, from epoch 1: the step whose Advance fossilized it
    assert last and credited[step] == pytest.approx(last) and np.count_nonzero(credited) == 1


# ---- learners ------------------------------------------------------------------------------------


def test_ppo_update_on_a_fixed_batch_reduces_its_loss(played):
    played_net, _, _, _, _, batch = played
    net = make_net(SPEC, 64, seed=3)
    net.load_state_dict(played_net.state_dict())  # a copy: the fixture's net stays as it played
    cfg = PPOConfig(update_epochs=8, minibatches=1, target_kl=None, learning_rate=3e-3, norm_adv=False)
    b = dict(batch)
    b["advantages"], b["returns"] = advantages(b, net, cfg.gamma, cfg.gae_lambda)
    b["advantages"] = torch.linspace(-1, 1, len(b["reward"]))  # a fixed, informative signal
    before, stats = ppo_loss(net, b, cfg)
    assert float(stats["approx_kl"]) == pytest.approx(0.0, abs=1e-6)  # logged log-probs are the policy's own
    out = update(net, torch.optim.Adam(net.parameters(), lr=cfg.learning_rate), b, cfg, torch.Generator().manual_seed(0))
    after, _ = ppo_loss(net, b, cfg)
    assert after.item() < before.item()
    assert {"approx_kl", "clipfrac", "explained_variance", "entropy"} <= out.keys()


def test_softening_a_policy_keeps_its_greedy_choices_and_flattens_its_sampling(played):
    played_net, _, _, _, _, batch = played
    net = make_net(SPEC, 64, seed=3)
    net.load_state_dict(played_net.state_dict())
    with torch.no_grad():  # sharpen first, so that the policy has choices it all but rules out
        for head in (net.op_head, net.slot_head, net.blueprint_head):
            head.weight.mul_(300.0)
            head.bias.mul_(300.0)
    obs, mask = batch["obs"], batch["mask"]
    greedy = lambda: net.act(obs, mask, greedy=True)  # noqa: E731
    before_action, before_log_prob, before_entropy = greedy()
    ppo.soften(net, 3.0)
    after_action, after_log_prob, after_entropy = greedy()
    assert torch.equal(before_action, after_action)
    assert (after_entropy >= before_entropy - 1e-6).all() and after_entropy.sum() > before_entropy.sum()
    assert (after_log_prob <= before_log_prob + 1e-6).all()  # the greedy choice's share went down


def test_a_critic_warmup_update_moves_the_critic_and_not_the_actor(played):
    played_net, _, _, _, _, batch = played
    net = make_net(SPEC, 64, seed=3)
    net.load_state_dict(played_net.state_dict())
    cfg = PPOConfig(update_epochs=4, minibatches=1, target_kl=None, learning_rate=3e-3)
    b = dict(batch)
    b["advantages"], b["returns"] = advantages(b, net, cfg.gamma, cfg.gae_lambda)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    value_loss = lambda: ppo_loss(net, b, cfg)[1]["value_loss"].item()  # noqa: E731
    start = value_loss()
    update(net, torch.optim.Adam(net.parameters(), lr=cfg.learning_rate), b, cfg, torch.Generator().manual_seed(0),
           actor=False)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("critic."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("critic."))
    assert value_loss() < start


def test_shared_baseline_removes_what_the_runs_of_an_update_have_in_common():
    # three episodes of lengths 3, 3, 2, laid end to end as in a batch
    step = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    adv = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 2.0, 6.0])
    out = centre_per_step(adv, step)
    # step 0 of the first episode: 1 - mean(0, 2); step 2 of the second: 5 - 3 (the third never got there)
    assert out[0].item() == pytest.approx(0.0) and out[5].item() == pytest.approx(2.0)
    luck = torch.tensor([7.0, -3.0, 0.5])[step]  # a seed's luck: the same shift for every run at a step
    assert torch.allclose(centre_per_step(adv + luck, step), out)
    assert centre_per_step(torch.tensor([1.5, 2.5]), torch.tensor([0, 1])).tolist() == [1.5, 2.5]  # alone: kept


def test_read_batch_numbers_the_steps_of_each_episode(played):
    *_, episodes, batch = played
    assert batch["step"].tolist() == [t for e in episodes for t in range(len(e))]
    assert batch["last"].tolist() == [t == len(e) - 1 for e in episodes for t in range(len(e))]


def test_gae_matches_a_hand_computation():
    net = make_net(SPEC, 8, seed=0)
    b = {"reward": torch.tensor([1.0, 0.0, 2.0]), "value": torch.tensor([0.5, 0.25, 1.0]),
         "done": torch.tensor([False, False, True]), "last": torch.tensor([False, False, True]),
         "next_obs": torch.zeros(3, SPEC.obs_dim)}
    adv, ret = advantages(b, net, gamma=0.5, lam=0.5)
    d2 = 2.0 - 1.0
    d1 = 0.0 + 0.5 * 1.0 - 0.25
    d0 = 1.0 + 0.5 * 0.25 - 0.5
    expected = [d0 + 0.25 * (d1 + 0.25 * d2), d1 + 0.25 * d2, d2]
    assert adv.tolist() == pytest.approx(expected)
    assert ret.tolist() == pytest.approx([a + v for a, v in zip(expected, [0.5, 0.25, 1.0])])


def test_expectile_loss_matches_a_hand_computed_value():
    diff = torch.tensor([1.0, -2.0, 0.5, -0.5])
    # τ = 0.7: positive errors weigh 0.7, negative ones 0.3
    expected = (0.7 * 1.0 + 0.3 * 4.0 + 0.7 * 0.25 + 0.3 * 0.25) / 4
    assert float(expectile_loss(diff, 0.7)) == pytest.approx(expected)
    assert float(expectile_loss(diff, 0.5)) == pytest.approx(0.5 * float((diff**2).mean()))


def toy_episode(n: int = 64) -> Episode:
    """One state, seen n times: half the time `wait` (reward 0), half `germinate early conv_light` (reward 1)."""
    rng = np.random.default_rng(0)
    obs = np.tile(rng.standard_normal(SPEC.obs_dim).astype(np.float32), (n, 1))
    mask = F.ActionMask(np.array([True, True, False, False]), np.zeros((4, SPEC.n_slots), bool),
                        np.zeros((SPEC.n_slots, SPEC.n_blueprints), bool))
    mask.slot[F.GERMINATE, 0] = mask.blueprint[0, :] = True
    good = (F.GERMINATE, 0, SPEC.blueprints.index("conv_light"))
    action = np.array([(0, 0, 0) if i % 2 else good for i in range(n)], np.int64)
    reward = np.array([0.0 if i % 2 else 1.0 for i in range(n)], np.float32)
    return Episode("toy", [], obs, np.zeros_like(obs), np.tile(mask.flat(), (n, 1)), action,
                   np.array([F.joint_index(*a, SPEC) for a in action]), np.full(n, np.nan, np.float32),
                   np.full(n, np.nan, np.float32), np.zeros((n, 4), np.float32), reward, np.ones(n, bool), None, None)


def test_iql_prefers_the_better_action_of_its_data():
    cfg = IQLConfig(steps=300, batch_size=64, learning_rate=3e-3, log_every=100)
    net, result = train_iql(cfg, SPEC, [toy_episode()])
    episode = toy_episode(2)
    action, _, _ = net.act(torch.from_numpy(episode.obs[:1]), torch.from_numpy(episode.mask[:1]), greedy=True)
    assert action[0].tolist() == list(episode.action[0])
    assert result["stats"]["reward.terminal"] == 1.0


def test_iql_that_diverges_fails_in_one_line_before_its_policy_is_kept(monkeypatch):
    import esper.simic.iql as iql

    step = iql.iql_step

    def diverging(*args):
        out = step(*args)
        return out | {"q_loss": float("nan")}

    monkeypatch.setattr(iql, "iql_step", diverging)
    sink = ListSink()
    with pytest.raises(EsperError, match=r"IQL diverged at step 1 \(q_loss not finite\); no policy was saved"):
        train_iql(IQLConfig(steps=4, batch_size=8, log_every=2), SPEC, [toy_episode(8)], sink=sink)
    assert sink.events == []  # no statistics with a NaN in them reach the log


def test_iql_trains_on_one_thread_and_restores_the_process_setting():
    seen = []

    class Watching(ListSink):
        def append(self, batch):
            seen.append(torch.get_num_threads())
            super().append(batch)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_iql(IQLConfig(steps=4, batch_size=8, log_every=2), SPEC, [toy_episode(8)], sink=Watching())
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---- the policy file and controller ----------------------------------------------------------------


def test_policy_file_runs_greedily_as_a_controller(tmp_path, data):
    path = tmp_path / "policy.pt"
    save_policy(path, make_net(SPEC, 32, seed=1), "ppo", RewardConfig(params=0.4), hidden=32)
    controller = load_policy_controller(str(path))
    assert isinstance(controller, PolicyController) and controller.name == "policy"
    config = resolve_config(RunConfig(controller="policy", epochs=3, seed=0, policy=str(path)))
    runs = [ListSink(), ListSink()]
    for sink in runs:
        execute(config, load_policy_controller(str(path)), sink, data=data)
    issued = [e for e in runs[0].events if isinstance(e, CommandIssued)]
    assert len(issued) == 3 and all(e.mask and e.log_prob is not None and e.value is not None for e in issued)
    assert [encode(e) for e in runs[0].events] == [encode(e) for e in runs[1].events], "greedy is deterministic"


def test_an_interrupted_policy_save_leaves_the_old_file_whole_and_no_litter(tmp_path, monkeypatch):
    path = tmp_path / "policy.pt"
    save_policy(path, make_net(SPEC, 32, seed=1), "ppo", RewardConfig(), hidden=32)
    before = path.read_bytes()

    def half_written(blob, file):
        Path(file).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        save_policy(path, make_net(SPEC, 32, seed=2), "ppo", RewardConfig(), hidden=32)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["policy.pt"]


def test_sampled_controller_samples_the_policy_seeded_by_the_run(tmp_path, data):
    path = tmp_path / "policy.pt"
    save_policy(path, make_net(SPEC, 32, seed=1), "ppo", RewardConfig(), hidden=32)
    seen = []

    class Watching(PolicyController):
        def decide(self, obs):
            seen.append(obs)
            return super().decide(obs)

    config = resolve_config(RunConfig(controller="sampled", epochs=3, seed=5, policy=str(path)))
    runs = [ListSink(), ListSink()]
    for sink in runs:
        execute(config, make_controller("sampled", 5, str(path)), sink, data=data)
    assert [encode(e) for e in runs[0].events] == [encode(e) for e in runs[1].events], "seeded by the run's seed"
    execute(config, Watching(load_policy(str(path))[0], sample_seed=0), ListSink(), data=data)
    greedy, sampled = load_policy_controller(str(path)), load_policy_controller(str(path), sample_seed=0)
    assert sampled.name == "sampled" and greedy.name == "policy"
    assert len({encode(greedy.decide(seen[0])) for _ in range(20)}) == 1
    assert len({encode(sampled.decide(seen[0])) for _ in range(20)}) > 1


def test_a_file_that_is_not_a_policy_is_bad_input(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a policy")
    with pytest.raises(BadInput):
        load_policy_controller(str(bad))
    with pytest.raises(BadInput):
        load_policy_controller(str(tmp_path / "missing.pt"))
    torch.save({"format": "something else"}, bad)
    with pytest.raises(BadInput):
        load_policy_controller(str(bad))


def test_a_policy_whose_weights_are_not_finite_is_bad_input(tmp_path):
    """Greedy, such a policy chose `wait` at every epoch without a word; sampling, it crashed torch."""
    net = make_net(SPEC, 32, seed=1)
    with torch.no_grad():
        next(net.parameters())[0, 0] = float("nan")
    save_policy(tmp_path / "nan.pt", net, "ppo", RewardConfig(), hidden=32)
    with pytest.raises(BadInput, match="weights are not all finite numbers: the training that wrote it diverged"):
        load_policy_controller(str(tmp_path / "nan.pt"))


def test_ppo_that_diverges_fails_in_one_line_and_saves_no_policy(tmp_path):
    """A reward weight past float32's range makes every reward infinite, and the first update's weights NaN."""
    cfg = PPOConfig(epochs=2, episodes=2, n_envs=2, reward=RewardConfig(accuracy=1e308))
    with warnings.catch_warnings(), pytest.raises(EsperError, match=r"PPO diverged at update 1 \(the policy's weights"):
        warnings.simplefilter("error", RuntimeWarning)  # the one line is all the user sees: no numpy overflow warning
        train_ppo(cfg, tmp_path / "ppo.pt", Workspace.at(tmp_path))
    assert not (tmp_path / "ppo.pt").exists()


def test_a_param_budget_charges_only_the_growth_beyond_it():
    host, budget = 1000, 2000

    def cost(before: int, after: int, param_budget: int) -> float:
        return components(StepOutcome(0.5, 0.5, before, after, host, 0.0, False), param_budget)["params"]

    assert cost(1000, 1900, budget) == 0.0  # growth within the budget is free
    assert cost(1900, 3000, budget) == pytest.approx(-math.log(3000 / 2000))  # only the part beyond it costs
    assert cost(3000, 1500, budget) == pytest.approx(math.log(3000 / 2000))  # a cull gives the charge back
    assert cost(1000, 1900, 0) == pytest.approx(-math.log(1.9))  # no budget: all growth over the host costs
    assert cost(1000, 1900, 500) == pytest.approx(-math.log(1.9))  # a budget below the host is the host
    path = [1000, 1500, 2600, 2100, 4000]
    assert sum(cost(a, b, budget) for a, b in zip(path, path[1:])) == pytest.approx(-math.log(4000 / budget))


def test_a_rollout_run_names_the_file_holding_its_policy_by_hash(tmp_path):
    """As a run of controller `policy` names its file: the --init file in the first update, then the checkpoint the
    last update wrote (its `CheckpointSaved`'s hash). Re-execution replays the logged commands, whatever the file holds
    now; a policy no file holds (--init's, softened) is named by none."""
    ws, out, init = Workspace.at(tmp_path), tmp_path / "ppo.pt", tmp_path / "init.pt"
    save_policy(init, make_net(SPEC, 64, seed=7), "ppo", RewardConfig(), hidden=64)
    result = train_ppo(PPOConfig(epochs=2, episodes=2, n_envs=1), out, ws, init=init)
    soft = train_ppo(PPOConfig(epochs=1, episodes=1, n_envs=1, init_temperature=2.0), tmp_path / "soft.pt", ws, init=init)
    with ws.reader() as reader:
        (after_1,), = reader.con.execute("SELECT payload->>'$.sha256' FROM events WHERE run_id = ? AND "
                                         "type = 'CheckpointSaved' AND payload->>'$.update' = '1'",
                                         [result["learner"]]).fetchall()
        first, second, softened = (reader.read_run(job["runs"].removesuffix("*") + f"{update:04d}-e0")
                                   for job, update in ((result, 1), (result, 2), (soft, 1)))
    named = lambda recorded: (recorded[0].event.config.policy, recorded[0].event.config.policy_sha256)  # noqa: E731
    assert named(first) == (str(init.resolve()), hashlib.sha256(init.read_bytes()).hexdigest())
    assert named(second) == (str(out.resolve()), after_1)
    assert named(softened) == (None, None)
    episode = replay_episode(first, SPEC, run_id="first")
    with torch.no_grad():  # the file named played: its critic gives the value logged with the first decision
        assert load_policy(init)[0].value(torch.from_numpy(episode.obs[:1])).item() == pytest.approx(
            float(episode.value[0]), abs=1e-6)
    assert verify_run(second).events == len(second)  # the file has moved on to update 2's policy since


def _selections(ws: Workspace, learner: str) -> dict[int, dict]:
    with ws.reader() as reader:
        rows = reader.con.execute("SELECT payload->>'$.update', payload->>'$.stats' FROM events "
                                  "WHERE run_id = $r AND type = 'PolicyUpdated'", {"r": learner}).fetchall()
    stats = {int(u): msgspec.json.decode(s) for u, s in rows}
    return {u: s for u, s in stats.items() if "select.return" in s}


def test_selection_scores_the_greedy_policy_on_fixed_runs_and_changes_no_training(tmp_path, data):
    ws, out = Workspace.at(tmp_path), tmp_path / "ppo.pt"
    cfg = PPOConfig(epochs=4, episodes=2, n_envs=2, select_every=1, select_runs=2, learning_rate=0.01)
    result = train_ppo(cfg, out, ws)
    selections = _selections(ws, result["learner"])
    assert sorted(selections) == [0, 1]  # the starting policy, then after the update
    assert {"select.return", "select.val_accuracy", "select.params", "select.failed", "select.kept_update"} <= selections[1].keys()
    kept = result["kept_update"]
    # the file's policy, scored again on the same selection runs, scores exactly as logged: scores compare
    with Recorder(":memory:") as recorder:
        again = greedy_score(load_policy(out)[0], cfg, Players(data, recorder), "again", 0)
        seeds = sorted(recorder.read(r)[0].event.config.seed for r in recorder.run_ids())
    assert again == {k: v for k, v in selections[kept].items() if k != "select.kept_update"}
    assert seeds == [selection_seed(cfg, 0), selection_seed(cfg, 1)]
    # playing the selection runs draws nothing from what training draws: the same job without them ends equal
    # (to rounding: BLAS sums in an order that may depend on where the allocator put the tensors)
    plain = train_ppo(msgspec.structs.replace(cfg, select_every=0), tmp_path / "plain.pt", ws)
    latest, trained = load_policy(out)[1]["train"]["latest"], load_policy(plain["out"])[1]["model"]
    assert plain["kept_update"] is None
    assert all(torch.allclose(latest[k], trained[k], atol=1e-4) for k in trained)


def _scripted(monkeypatch, scores: dict[int, float]) -> dict[int, dict]:
    """Make `greedy_score` return `scores[update]`; the weights it was shown, by update."""
    seen = {}

    def scripted(net, cfg, players, tag, update):
        seen[update] = {k: v.clone() for k, v in net.state_dict().items()}
        return {"select.return": scores[update]}

    monkeypatch.setattr(ppo, "greedy_score", scripted)
    return seen


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_selection_keeps_the_best_scoring_policy_and_resumes_from_the_latest(tmp_path, monkeypatch):
    # every 2 updates and after the last; update 3 ties update 2 and the older stays; update 5 is best
    seen = _scripted(monkeypatch, {0: 0.1, 2: 0.5, 3: 0.5, 4: 0.4, 5: 0.6})
    ws, out = Workspace.at(tmp_path), tmp_path / "ppo.pt"
    cfg = PPOConfig(epochs=2, episodes=6, n_envs=2, select_every=2, ent_coef=0.5, learning_rate=0.01)
    assert train_ppo(cfg, out, ws)["kept_update"] == 2
    assert sorted(seen) == [0, 2, 3]
    blob = load_policy(out)[1]
    assert _same(blob["model"], seen[2]) and _same(blob["train"]["latest"], seen[3]) and not _same(seen[2], seen[3])
    assert blob["train"]["kept"] == {"update": 2, "failed": 0, "score": 0.5}

    seen.clear()
    resumed = train_ppo(msgspec.structs.replace(cfg, episodes=10), out, ws, resume=True)
    assert sorted(seen) == [4, 5] and resumed["kept_update"] == 5  # the kept policy was restored, not scored again
    assert _same(load_policy(out)[1]["model"], seen[5])
    latest = make_net(SPEC, cfg.hidden, seed=0)
    latest.load_state_dict(blob["train"]["latest"])
    with ws.reader() as reader:
        (run_id,), = reader.con.execute("SELECT DISTINCT run_id FROM events WHERE run_id LIKE '%-u0004-e0'").fetchall()
        episode = replay_episode(reader.read_run(run_id), SPEC, cfg.reward, run_id)
    with torch.no_grad():  # the resumed rollout was played by the latest weights, not by the kept ones
        assert latest.value(torch.from_numpy(episode.obs[:1])).item() == pytest.approx(float(episode.value[0]), abs=1e-6)


def test_a_selecting_job_out_of_time_scores_its_last_update_and_writes_the_file(tmp_path, monkeypatch):
    seen = _scripted(monkeypatch, {0: 0.1, 1: 0.2})
    lines = []
    cfg = PPOConfig(epochs=2, episodes=8, n_envs=2, select_every=3)
    result = train_ppo(cfg, tmp_path / "ppo.pt", Workspace.at(tmp_path), progress=lines.append,
                       deadline=time.perf_counter())
    assert result["episodes"] == 2 and any("time is up after update 1" in line for line in lines)
    assert sorted(seen) == [0, 1] and result["kept_update"] == 1
    assert _same(load_policy(tmp_path / "ppo.pt")[0].state_dict(), seen[1])


def test_a_policy_with_a_failed_selection_run_never_beats_one_without():
    kept = ppo.Kept(update=1, failed=1, score=2.0, net=None)
    assert kept.beaten_by(failed=0, score=1.0) and not kept.beaten_by(failed=1, score=2.0)
    assert not ppo.Kept(update=1, failed=0, score=1.0, net=None).beaten_by(failed=1, score=5.0)


def test_reward_config_is_in_the_update_stats():
    config = RewardConfig(accuracy=2.0, param_budget=6000)
    stats = config.stats()  # every stat is a float: the budget comes back as one
    assert stats["reward.accuracy"] == 2.0 and stats["reward.param_budget"] == 6000.0 and msgspec.convert(
        {k.removeprefix("reward."): v for k, v in stats.items()}, RewardConfig, strict=False) == config


def test_a_sigterm_held_where_python_has_no_handler_for_it_still_ends_the_process():
    """Called from a script (`esper.app.learners.ppo_job`), SIGTERM has its default action: held during a
    checkpoint, it must end the process after the step, not be dropped."""
    script = ("import os, signal, sys, time\n"
              "from esper.store.recorder import signals_held\n"
              "with signals_held():\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(0.05)\n"
              "    print('step done', flush=True)\n"
              "print('went on')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGTERM and done.stdout == "step done\n", (done.returncode, done.stdout)


@pytest.mark.parametrize("signum, stop", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_stop_during_a_checkpoint_and_its_event_waits_for_both(signum, stop):
    """PPO writes its one checkpoint file, then the event with its sha256: stopped between the two, the file was one
    its log did not know, and resuming was refused. The stop now comes after the step, as it would have."""
    from esper.cli import _terminate

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    steps = []
    try:
        with pytest.raises(stop):
            with ppo.signals_held():
                steps.append("file")
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # where the signal would have landed
                steps.append("event")
        assert steps == ["file", "event"]
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        Terminated.received = False
