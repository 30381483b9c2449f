"""What a policy sees and what it may do: an `Observation` as a vector, and the legal actions as masks.

An action has three factored heads: the operation (`wait`, `germinate`, `advance`, `cull`), the slot it
acts on, and the blueprint it grows. The slot head is read in the row of the chosen operation and the
blueprint head in the row of the chosen slot, so each head's mask is exact given the choices before it:

* `op[o]`: some legal command has operation `o`;
* `slot[o, s]`: operation `o` is legal in slot `s` (germinate: the slot is free; advance: the gate of
  its seed is open; cull: its seed is training or blending);
* `blueprint[s, b]`: `Germinate(s, b)` is legal.

Every mask comes from `legal_commands`, i.e. from the lifecycle machine: an illegal command can never be
sampled, so it never needs punishing. A head that an operation does not use (the slot of `wait`, the
blueprint of `advance`) has an all-false row and adds nothing to the action's log-probability.
"""

import math

import attrs
import msgspec
import numpy as np

from esper.kasmina import preset_host
from esper.leyline.commands import Advance, Command, Cull, Germinate, Wait
from esper.leyline.events import RunStarted
from esper.leyline.garden import Garden, legal_commands
from esper.leyline.stages import SeedStage
from esper.tamiyo.observation import Observation
from esper.tolaria.tasks import TASKS, get_task

OPS = ("wait", "germinate", "advance", "cull")
WAIT, GERMINATE, ADVANCE, CULL = range(4)
STAGES = tuple(SeedStage)
HISTORY = 4
"""How many recent changes of validation accuracy the observation carries."""


class FeatureSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The shape of a policy's world: which slots and blueprints its heads index. Stored in policy files."""

    slots: tuple[str, ...]
    """Slot names of the host, in order: the slot head's choices."""
    blueprints: tuple[str, ...]
    """Blueprints of the task, in order: the blueprint head's choices."""
    history: int = HISTORY
    """Recent validation-accuracy changes in the observation vector."""

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    @property
    def n_blueprints(self) -> int:
        return len(self.blueprints)

    @property
    def n_actions(self) -> int:
        """Size of the joint (flat) action space: wait, S×B germinations, S advances, S culls."""
        return 1 + self.n_slots * self.n_blueprints + 2 * self.n_slots

    @property
    def obs_dim(self) -> int:
        return 10 + self.history + self.n_slots * (len(STAGES) + 9 + self.n_blueprints)

    @property
    def mask_dim(self) -> int:
        return len(OPS) + len(OPS) * self.n_slots + self.n_slots * self.n_blueprints


def spec_for_task(task: str) -> FeatureSpec:
    preset = get_task(task)
    return FeatureSpec(slots=tuple(preset_host(preset).slot_names), blueprints=tuple(preset.blueprints))


def task_of(spec: FeatureSpec) -> str | None:
    """The built-in task whose slots and blueprints `spec` has (None: none, e.g. a user's own model's)."""
    return next((name for name in TASKS if spec_for_task(name) == spec), None)


def spec_for_run(started: RunStarted) -> FeatureSpec:
    """The spec of the run `started` begins: its slots and blueprints (a task of user code, `esper.fit`, has no
    preset to build a host from; its runs say what they grew)."""
    return FeatureSpec(slots=tuple(started.slots), blueprints=tuple(started.blueprints))


# ---- observation → vector ----------------------------------------------------------------------


def encode(obs: Observation, spec: FeatureSpec) -> np.ndarray:
    """The observation as a float32 vector of length `spec.obs_dim`, every entry roughly in -1..1."""
    epochs = max(obs.epochs, 1)
    host = max(obs.host_params, 1)
    history = list(obs.accuracy_history)
    deltas = [history[i] - history[i - 1] if i >= 1 else 0.0 for i in range(len(history))][-spec.history:]
    deltas = [0.0] * (spec.history - len(deltas)) + deltas
    live = sum(v.stage in (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING) for v in obs.slots)
    out = [
        obs.epoch / epochs,
        (obs.epochs - obs.epoch) / epochs,
        obs.val_accuracy,
        obs.best_val_accuracy,
        obs.best_val_accuracy - obs.val_accuracy,
        _clip(obs.train_loss / 3.0),
        _clip(obs.val_loss / 3.0),
        min(obs.plateau, 10) / 10,
        math.log(max(obs.params, 1) / host),
        live / max(spec.n_slots, 1),
        *(_clip(10 * d) for d in deltas),
    ]
    by_slot = {v.slot: v for v in obs.slots}
    for slot in spec.slots:
        v = by_slot.get(slot)
        if v is None:
            out += [0.0] * (len(STAGES) + 9 + spec.n_blueprints)
            continue
        seed = obs.garden.seeds.get(v.seed_id) if v.seed_id is not None else None
        out += [float(v.stage is s) for s in STAGES]
        out += [
            v.alpha,
            min(v.epochs_in_stage, 10) / 10,
            v.gradient_health,
            _clip(10 * v.contribution) if v.contribution is not None else 0.0,
            float(v.contribution is not None),
            float(v.gate_open),
            min(v.fossilized, 3) / 3,
            math.log1p(seed.params / host) if seed is not None else 0.0,
            float(v.seed_id is not None),
        ]
        out += [float(v.blueprint == b) for b in spec.blueprints]
    return np.asarray(out, dtype=np.float32)


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x)) if math.isfinite(x) else 0.0


# ---- legal actions → masks ---------------------------------------------------------------------


@attrs.frozen(eq=False)
class ActionMask:
    """The legal actions of one state, per head (see the module docstring)."""

    op: np.ndarray
    """bool (4,)"""
    slot: np.ndarray
    """bool (4, S): row o is the slot mask once operation o is chosen."""
    blueprint: np.ndarray
    """bool (S, B): row s is the blueprint mask of germinating into slot s."""

    def flat(self) -> np.ndarray:
        return np.concatenate([self.op, self.slot.ravel(), self.blueprint.ravel()])

    def to_log(self, spec: FeatureSpec) -> dict[str, list[bool]]:
        """The form `CommandIssued.mask` stores: one list per head row."""
        out = {"op": self.op.tolist()}
        out |= {f"slot.{OPS[o]}": self.slot[o].tolist() for o in range(1, len(OPS))}
        out |= {f"blueprint.{s}": self.blueprint[i].tolist() for i, s in enumerate(spec.slots)}
        return out

    @classmethod
    def from_log(cls, logged: dict[str, list[bool]], spec: FeatureSpec) -> "ActionMask":
        slot = np.zeros((len(OPS), spec.n_slots), bool)
        for o in range(1, len(OPS)):
            slot[o] = logged[f"slot.{OPS[o]}"]
        return cls(
            op=np.asarray(logged["op"], bool),
            slot=slot,
            blueprint=np.asarray([logged[f"blueprint.{s}"] for s in spec.slots], bool).reshape(spec.n_slots, spec.n_blueprints),
        )

    @classmethod
    def unflat(cls, flat: np.ndarray, spec: FeatureSpec) -> "ActionMask":
        s, b = spec.n_slots, spec.n_blueprints
        return cls(flat[:4].copy(), flat[4 : 4 + 4 * s].reshape(4, s).copy(), flat[4 + 4 * s :].reshape(s, b).copy())


def action_mask(garden: Garden, spec: FeatureSpec) -> ActionMask:
    """Masks of every head from the commands the lifecycle would accept now."""
    slot = np.zeros((len(OPS), spec.n_slots), bool)
    blueprint = np.zeros((spec.n_slots, spec.n_blueprints), bool)
    op = np.zeros(len(OPS), bool)
    slot_index = {s: i for i, s in enumerate(spec.slots)}
    bp_index = {b: i for i, b in enumerate(spec.blueprints)}
    for command in legal_commands(garden):
        if isinstance(command, Wait):
            op[WAIT] = True
        elif isinstance(command, Germinate):
            i, j = slot_index.get(command.slot), bp_index.get(command.blueprint)
            if i is not None and j is not None:
                op[GERMINATE] = slot[GERMINATE, i] = blueprint[i, j] = True
        else:
            o = ADVANCE if isinstance(command, Advance) else CULL
            i = slot_index.get(garden.seeds[command.seed_id].slot)
            if i is not None:
                op[o] = slot[o, i] = True
    return ActionMask(op, slot, blueprint)


# ---- actions ↔ commands ------------------------------------------------------------------------


def to_command(op: int, slot: int, blueprint: int, garden: Garden, spec: FeatureSpec, reason: str = "policy") -> Command:
    """The command of a factored action (unused heads are ignored)."""
    if op == WAIT:
        return Wait()
    if op == GERMINATE:
        return Germinate(slot=spec.slots[slot], blueprint=spec.blueprints[blueprint])
    seed = garden.live_seed(spec.slots[slot])
    if seed is None:  # cannot happen under the masks; Wait is what a command without a seed would amount to
        return Wait()
    return Advance(seed_id=seed.seed_id) if op == ADVANCE else Cull(seed_id=seed.seed_id, reason=reason)


def from_command(command: Command, garden: Garden, spec: FeatureSpec) -> tuple[int, int, int]:
    """The factored action `(op, slot, blueprint)` of a recorded command, judged in the state it was issued in.

    A command the lifecycle refused changed nothing, so it is the action `wait`; unused heads are 0."""
    if isinstance(command, Wait) or not garden.legal(command):
        return WAIT, 0, 0
    if isinstance(command, Germinate):
        if command.slot not in spec.slots or command.blueprint not in spec.blueprints:
            return WAIT, 0, 0
        return GERMINATE, spec.slots.index(command.slot), spec.blueprints.index(command.blueprint)
    slot = garden.seeds[command.seed_id].slot
    if slot not in spec.slots:
        return WAIT, 0, 0
    return (ADVANCE if isinstance(command, Advance) else CULL), spec.slots.index(slot), 0


def joint_index(op: int, slot: int, blueprint: int, spec: FeatureSpec) -> int:
    """The factored action as one index into the flat action space (what IQL's Q-functions output)."""
    s, b = spec.n_slots, spec.n_blueprints
    if op == WAIT:
        return 0
    if op == GERMINATE:
        return 1 + slot * b + blueprint
    if op == ADVANCE:
        return 1 + s * b + slot
    return 1 + s * b + s + slot


def joint_mask(mask: ActionMask, spec: FeatureSpec) -> np.ndarray:
    """The legal flat actions of a state: bool (n_actions,)."""
    out = np.zeros(spec.n_actions, bool)
    out[0] = mask.op[WAIT]
    s, b = spec.n_slots, spec.n_blueprints
    out[1 : 1 + s * b] = mask.blueprint.ravel() & np.repeat(mask.slot[GERMINATE], b) & mask.op[GERMINATE]
    out[1 + s * b : 1 + s * b + s] = mask.slot[ADVANCE] & mask.op[ADVANCE]
    out[1 + s * b + s :] = mask.slot[CULL] & mask.op[CULL]
    return out
