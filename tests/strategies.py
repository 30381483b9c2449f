"""Hypothesis strategies for Esper's contracts, shared by every test module.

Values stay inside what the log can hold exactly: finite floats (JSON has no NaN or infinity, msgspec
writes them as null), integers inside int64 and epochs inside the INTEGER `epoch` column.
"""

import string

from hypothesis import strategies as st

from esper.leyline import (
    Advance,
    CheckpointSaved,
    CommandIssued,
    CommandRejected,
    Cull,
    EpochEnded,
    Germinate,
    LifecycleConfig,
    PolicyUpdated,
    RunConfig,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    SeedGerminated,
    SeedStage,
    SeedTelemetry,
    SeedTransitioned,
    Wait,
)
from esper.leyline.config import TaskPreset
from esper.store import Pending

# ---- scalars ----------------------------------------------------------------------------------

names = st.text(string.ascii_lowercase + string.digits + "_.-", min_size=1, max_size=12)
"""Slot, blueprint, seed and controller names."""
run_ids = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=16)
texts = st.text(max_size=24)
"""Free text: any Unicode (reasons, errors, dict keys)."""
finite = st.floats(allow_nan=False, allow_infinity=False)
fractions = st.floats(0.0, 1.0)
epochs = st.integers(0, 100_000)
counts = st.integers(0, 2**40)
stage_names = st.sampled_from([s.value for s in SeedStage])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
evidence = st.dictionaries(names, json_values, max_size=4)

# ---- configs and commands ---------------------------------------------------------------------

lifecycle_configs = st.builds(
    LifecycleConfig,
    min_training_epochs=st.integers(0, 10),
    gradient_health_threshold=fractions,
    blend_epochs=st.integers(1, 10),
    stability_window=st.integers(0, 5),
    regression_tolerance=fractions,
    auto_cull_contribution=st.floats(-1.0, 0.0),
    auto_cull_patience=st.integers(0, 5),
    embargo_epochs=st.integers(0, 5),
    max_params=counts,
)
run_configs = st.builds(
    RunConfig,
    task=st.sampled_from(["mnist1d", "cifar10"]),
    controller=st.sampled_from(["static", "heuristic", "scratch", "random", "policy"]),
    seed=st.integers(0, 2**32 - 1),
    epochs=st.integers(0, 500),
    policy=st.none() | texts,
    lifecycle=lifecycle_configs,
    precision=st.sampled_from([None, "fp32", "bf16", "fp16"]),
)
commands = st.one_of(
    st.builds(Germinate, slot=names, blueprint=names),
    st.builds(Advance, seed_id=names),
    st.builds(Cull, seed_id=names, reason=texts),
    st.just(Wait()),
)

# ---- events -----------------------------------------------------------------------------------

maybe_epoch = st.none() | epochs
telemetry = st.builds(
    SeedTelemetry,
    seed_id=names,
    alpha=fractions,
    gradient_health=fractions,
    seed_loss=st.none() | finite,
    contribution=st.none() | st.floats(-1.0, 1.0),
)

presets = st.builds(
    TaskPreset, name=st.sampled_from(["mnist1d", "cifar10"]), host=names, batch_size=st.integers(1, 4096),
    optimizer=st.sampled_from(["adam", "sgd"]), lr=finite, weight_decay=finite, seed_lr=finite,
    epochs=st.integers(1, 500), blueprints=st.lists(names, max_size=5).map(tuple), momentum=finite,
    cpu_threads=st.integers(0, 64), augment=st.booleans(), anneal_epochs=st.integers(0, 50),
)
run_started = st.builds(
    RunStarted, epoch=st.none(), config=run_configs, preset=presets, host_params=counts,
    versions=st.dictionaries(names, texts, max_size=3),
    slots=st.lists(names, max_size=3), blueprints=st.lists(names, max_size=3),
    seed_sizes=st.dictionaries(names, st.dictionaries(names, counts, max_size=3), max_size=3),
    ranks=st.integers(1, 64), channels_last=st.booleans(),
)
epoch_ended = st.builds(
    EpochEnded, epoch=epochs, train_loss=finite, val_loss=finite, val_accuracy=fractions, params=counts,
    seeds=st.lists(telemetry, max_size=3), diagnostics=st.dictionaries(names, json_values, max_size=3),
)
command_issued = st.builds(
    CommandIssued, epoch=maybe_epoch, command=commands, controller=names,
    log_prob=st.none() | finite, value=st.none() | finite,
    mask=st.none() | st.dictionaries(names, st.lists(st.booleans(), max_size=4), max_size=2),
)
command_rejected = st.builds(
    CommandRejected, epoch=maybe_epoch, command=commands, reason=texts,
    seed_id=st.none() | names, slot=st.none() | names,
)
seed_germinated = st.builds(SeedGerminated, epoch=maybe_epoch, seed_id=names, slot=names, blueprint=names, params=counts)
seed_transitioned = st.builds(
    SeedTransitioned, epoch=maybe_epoch, seed_id=names, slot=names, from_stage=stage_names, to_stage=stage_names,
    trigger=names, evidence=evidence,
)
sha256s = st.text("0123456789abcdef", min_size=64, max_size=64)
checkpoint_saved = st.builds(CheckpointSaved, epoch=epochs, sha256=sha256s, size=counts)
run_resumed = st.builds(RunResumed, epoch=epochs, sha256=sha256s, checkpoint_epoch=epochs)
policy_updated = st.builds(
    PolicyUpdated, epoch=maybe_epoch, update=st.integers(0, 10**6), stats=st.dictionaries(names, finite, max_size=4)
)
run_finished = st.builds(
    RunFinished, epoch=maybe_epoch, val_accuracy=fractions, test_accuracy=fractions, params=counts,
    seeds=st.dictionaries(stage_names, st.integers(0, 50), max_size=3),
)
run_failed = st.builds(RunFailed, epoch=maybe_epoch, error=texts)

EVENTS_BY_TYPE = {
    RunStarted: run_started, EpochEnded: epoch_ended, CommandIssued: command_issued,
    CommandRejected: command_rejected, SeedGerminated: seed_germinated, SeedTransitioned: seed_transitioned,
    CheckpointSaved: checkpoint_saved, RunResumed: run_resumed, PolicyUpdated: policy_updated, RunFinished: run_finished, RunFailed: run_failed,
}
events = st.one_of(*EVENTS_BY_TYPE.values())
"""Any event of the `Event` union, valid as a value (not necessarily a legal story)."""

pendings = st.builds(Pending, events)
"""An event with a fresh idempotency key."""

# ---- lifecycle runs: configs and telemetry that reach every stage in a few dozen epochs -----------

rule_configs = st.builds(
    LifecycleConfig,
    min_training_epochs=st.integers(0, 3),
    gradient_health_threshold=st.sampled_from([0.0, 0.3, 0.5, 0.9]) | fractions,
    blend_epochs=st.integers(1, 3),
    stability_window=st.integers(0, 3),
    regression_tolerance=st.sampled_from([0.0, 0.0, 0.01, 0.05, 0.2]),  # 0 most: a level blend is its edge
    auto_cull_contribution=st.sampled_from([-0.1, -0.02, 0.0]),
    auto_cull_patience=st.integers(0, 3),
    embargo_epochs=st.integers(0, 4),
)
"""Lifecycle configs whose gates open (and stay shut) often within short generated runs. `max_params` is
0 here: a cap only means something next to the run's sizes (`caps`)."""


def caps(host_params: int, seed_sizes: dict[str, dict[str, int]]) -> st.SearchStrategy[int]:
    """`max_params` for a run of these sizes: no cap, or one that some germinations fit under and some not, now and
    then exactly what the host and one seed hold (the cap's edge: a seed that meets it fits)."""
    sizes = sorted({size for by_blueprint in seed_sizes.values() for size in by_blueprint.values()})
    exact = st.sampled_from([host_params + size for size in sizes]) if sizes else st.nothing()
    return st.just(0) | st.integers(host_params, host_params + 3 * max(sizes, default=0)) | exact


host_sizes = st.integers(100, 10_000)
"""A host's parameter count."""


def seed_size_tables(slots: list[str], blueprints: list[str]) -> st.SearchStrategy[dict[str, dict[str, int]]]:
    """`RunStarted.seed_sizes`: each slot's blueprints and their sizes there. The first blueprint fits every slot;
    the others may not, as in a user's model whose slots are of several families (a convolution's, an MLP's)."""
    sizes = st.integers(1, 3_000)
    return st.fixed_dictionaries({slot: st.fixed_dictionaries({blueprints[0]: sizes}, optional={
        b: sizes for b in blueprints[1:]}) for slot in slots})


gradient_healths = st.sampled_from([0.0, 0.3, 0.5, 0.9] + [1.0] * 6) | st.floats(0.01, 1.0)
"""A seed's gradient health, often exactly on a threshold of `rule_configs`, now and then 0 (an automatic cull)."""
first_losses = st.sampled_from([1.0, 2.0])
loss_trends = st.sampled_from([None, 0.5, 0.9, 0.9, 1.0, 1.1])
"""A seed's next loss as a factor of its last one (None: not measured, as after a divergence): it mostly
improves, sometimes holds or worsens, so 'improving' is met and missed, strictly, in both directions."""
contributions = st.sampled_from([None, -0.2, -0.02, 0.0, 0.0, 0.05, 0.05, 0.1])
"""A seed's contribution: on the floors of `rule_configs` at times, mostly above them."""
val_accuracies = st.one_of(*[st.sampled_from([0.4, 0.45, 0.5, 0.5, 0.5, 0.5, 0.51, 0.55, 0.6]) for _ in range(3)],
                           fractions)  # three objects: one_of draws one of its distinct strategies, as likely each
"""Validation accuracies: mostly a few values that repeat, so that a blend often ends level with where it began
(the regression tolerance's edge) and fossilize gates open; now and then any fraction."""
blend_alphas = st.sampled_from([0.0, 0.5, 0.99, 1.0, 1.0, 1.0])
"""The α a blending seed reports: mostly full, so stability windows fill."""
