"""The hands: one model, its optimizers and its data; trains epochs and measures what gates need.

The model is a built-in host (the task preset's) or a user's grown model; the data is a built-in task's
(`TaskData`) or the user's own batches and loss (`UserData`): either says what the loss and the score of a
batch are. The trainer carries out lifecycle events on the model (`realize`), after the lifecycle machine
has accepted them, and never decides them. Each epoch it measures validation loss/accuracy and, per live
seed, gradient health, the seed's own loss and its counterfactual contribution (accuracy with the seed
minus accuracy with α forced to 0).

The GPU path: the forward passes run under autocast at the run's `precision` (bf16 by default on CUDA; fp16 adds a
`GradScaler`, whose overflow check reads one flag per optimizer step), a model with 2-D convolutions stores its
weights channels-last on CUDA, and a step reads nothing back from the device: the epoch's per-seed statistics
(gradient health, seed loss) and its loss add up on the device and are read once, at the epoch's end. With
`ranks` (`esper.tolaria.ranks`), each step trains on this process's shard of the batch and the gradients are
summed across the processes before any optimizer steps; a recorded run that N ranks trained (`Computed`) is trained
here as they did, one shard after another (re-execution and resume of that run).
"""

import math
import statistics
from typing import Sequence

import attrs
import torch
from torch import nn

from esper._kernels import RECORDED_BEFORE_KERNEL_SETS, cpu_kernels, has_avx2, kernel_set, use_cpu_kernels
from esper.errors import BadInput, RunFailed
from esper.kasmina import GrowableModel, isolated_examples, preset_host
from esper.leyline.config import RunConfig
from esper.leyline.events import Event, SeedGerminated, SeedTelemetry, SeedTransitioned
from esper.leyline.stages import SeedStage
from esper.tolaria.data import TaskData, augment
from esper.tolaria.health import HealthMeter
from esper.tolaria.inputs import examples_in, positional, rows
from esper.tolaria.ranks import Ranks, scaled_gradients, set_gradients, shard
from esper.tolaria.telemetry import SHARPNESS_EVERY, SHARPNESS_EXAMPLES, LayerGradients, sharpness
from esper.tolaria.tasks import TaskPreset
from esper.tolaria.userdata import UserData


@attrs.frozen
class EpochStats:
    train_loss: float
    val_loss: float
    val_accuracy: float
    params: int
    seeds: list[SeedTelemetry]
    diagnostics: dict = attrs.field(factory=dict)


DIVERGENCE_FACTOR = 10.0
"""An epoch whose training loss exceeds this many times the median of the run's earlier epochs' is over the bound:
for `TaskPreset.divergence_epochs` epochs in a row, the run has diverged."""
DIVERGENCE_AFTER = 3
"""Epochs before the factor applies: the first epochs' losses fall fast and are no baseline yet."""


def divergence(epoch: int, train_loss: float, earlier: Sequence[float], in_a_row: int = 1) -> str | None:
    """Why the host diverged at `epoch`, with the numbers that show it (None: it did not): its training loss is not
    finite, or it has been over `DIVERGENCE_FACTOR` times the median of the epochs before it for `in_a_row` epochs
    running, this one the last (`TaskPreset.divergence_epochs`). `earlier`: the run's training losses of epochs
    1 .. epoch-1, as its log holds them.

    One epoch over the bound is not enough by default: at a high rate Adam can lose most of a run's progress in an
    epoch and regain it in the next two (mnist1d's preset at 100 epochs, seed 3: 0.05, 0.36, 1.24, 0.45, 0.28, 0.12,
    and the run ended at 97.3 % test accuracy)."""
    if not math.isfinite(train_loss):
        return f"training diverged at epoch {epoch}: train loss {train_loss}"
    losses = [*earlier, train_loss]
    in_a_row = max(in_a_row, 1)
    streak = range(len(losses) - in_a_row, len(losses))  # this epoch and the in_a_row - 1 before it
    if epoch <= DIVERGENCE_AFTER or len(losses) < in_a_row or not all(_over_bound(losses, i) for i in streak):
        return None
    why = (f"training diverged at epoch {epoch}: train loss {train_loss:.6g} is over {DIVERGENCE_FACTOR:g}× "
           f"the median {statistics.median(earlier):.6g} of epochs 1–{len(earlier)}")
    if in_a_row == 1:  # the message of every run logged before the streak (RunStarted v5 and older), word for word
        return why
    return (f"{why}, and has been over {DIVERGENCE_FACTOR:g}× the median of the epochs before it "
            f"for {in_a_row} epochs in a row")


def _over_bound(losses: Sequence[float], i: int) -> bool:
    """Whether the loss of epoch i + 1 (`losses[i]`) is over `DIVERGENCE_FACTOR` times the median of the epochs
    before it (never within the first `DIVERGENCE_AFTER` epochs, whose losses fall fast and are no baseline yet)."""
    if i < DIVERGENCE_AFTER:
        return False
    return losses[i] > DIVERGENCE_FACTOR * statistics.median(losses[:i])


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {name} asked for, but CUDA is not available here (use cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BadInput(f"device {name} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type not in ("cpu", "cuda"):
        raise BadInput(f"unsupported device {name!r}: use cpu, cuda or cuda:N")
    if device.type == "cpu" and device.index:  # torch takes it, and every cpu:N is the one CPU: the log would mislead
        raise BadInput(f"device {name}: torch has one CPU device, cpu (its threads use every core)")
    kernel_set()  # an ESPER_CPU_KERNELS Esper does not know: one line, before anything is written (a run records it)
    return device


def check_recorded_device(run_id: str, name: str) -> None:
    """A recorded run is re-executed and resumed on the device it trained on (its numbers are that device's):
    where this machine has none such, one line says so (not `resolve_device`'s advice to use another)."""
    try:
        resolve_device(name)
    except BadInput:
        raise BadInput(f"run {run_id} trained on {name}, which this machine does not have: it re-executes and resumes "
                       "only on the device it trained on") from None


def settle_kernels(device: torch.device) -> None:
    """Have torch compute a run's events the same way every time it is re-executed (`esper replay --verify`). On
    CPU, with the kernel set `ESPER_CPU_KERNELS` names (`esper/_kernels.py`). On CUDA, with the same cuDNN
    convolution kernels every time: its autotuner and its fastest backward kernels may differ from run to run in
    the last bits. Process-wide settings of torch's, like the thread count on CPU."""
    if device.type == "cpu":
        use_cpu_kernels()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""`RunConfig.precision` → the dtype the forward passes autocast to (None: none, full float32)."""


def default_precision(device: str) -> str:
    """The precision a run on `device` takes when it names none: bf16 autocast on CUDA, float32 on CPU (where
    bf16 is slower than float32 on most processors)."""
    try:
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    except RuntimeError:  # an unknown device: `resolve_device` says so
        return "fp32"


def anneal_scale(epoch: int, epochs: int, anneal_epochs: int) -> float:
    """Learning-rate multiplier of `epoch` (1-based) in a run of `epochs`: 1, then over the last
    `anneal_epochs` a half cosine that steps down towards 0 without reaching it (the last epoch still learns)."""
    into = epoch - (epochs - anneal_epochs)
    if anneal_epochs <= 0 or into <= 0:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(into, anneal_epochs) / (anneal_epochs + 1)))


def make_optimizer(kind: str, params: list[nn.Parameter], lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """On CUDA the fused implementation: one kernel per step instead of several per group of tensors, which counts
    where the hosts are small and a step is bound by kernel launches (measured on an H200: 5-20 % off an epoch of
    the cifar10 and mnist1d presets). On CPU the default one, so that runs recorded on CPU re-execute bit for bit."""
    fused = True if params and all(p.is_cuda for p in params) else None
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True, fused=fused)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, keeping the implementation `make_optimizer` chose here (`fused`,
    `foreach`): torch takes each saved group's settings whole, so a checkpoint written where another was chosen (on
    CPU, or before CUDA's were fused) would bring its own, and a fused optimizer told it is not crashes under fp16's
    gradient scaler ("Expected grad_scale and found_inf to be None")."""
    chosen = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, chosen):
        group.update(kept)


@attrs.frozen
class Computed:
    """How a recorded run was computed (`RunStarted.ranks`, `threads`), to train it again the same way in this one
    process: re-execution (`--verify`) and `--resume`. The default: a new run, as this process computes."""

    ranks: int = 1
    threads: int = 0

    @classmethod
    def of(cls, started) -> "Computed":
        """One line (`BadInput`) for a CPU run computed with another CPU kernel set than this process's: its numbers
        would come out otherwise (re-execution) or mixed (a resumed run); the kernel set is the process's to choose.
        A log that records versions but no kernel set was computed with the `fast` one (its settings were Esper's
        then); one that records no versions, with settings unknown. Where this CPU cannot take a kernel set (no
        AVX2: nothing is pinned) there is nothing to choose, and re-execution says how far it differs."""
        recorded = started.versions.get("cpu_kernels", RECORDED_BEFORE_KERNEL_SETS if started.versions else None)
        on_cpu = started.config.device.startswith("cpu") and has_avx2()
        if on_cpu and recorded is not None and recorded != (here := cpu_kernels()):
            raise BadInput(f"the run was computed with the {recorded} CPU kernels, this process computes with the "
                           f"{here} ones: set ESPER_CPU_KERNELS (and any variable named) as the run had them")
        return cls(started.ranks, started.threads)


class Trainer:
    """The model, its optimizers and the epoch loop of one run; `config` is resolved (`resolve_config`)."""

    def __init__(self, config: RunConfig, preset: TaskPreset, data: TaskData | UserData, build_up_front: bool = False,
                 model: GrowableModel | None = None, ranks: Ranks | None = None, computed: Computed = Computed()):
        """`model`: a grown model from user code (`esper.fit`); None builds the preset's host. `ranks`: the processes
        this run trains on data-parallel (None: this one alone); the device is then this process's. `computed`: how a
        recorded run was computed, when this process trains it again: as its ranks did, on as many threads."""
        self.config = config
        self.preset = preset
        self.ranks = ranks
        self.shards = computed.ranks if ranks is None else 1
        """The shards of each batch this process passes through the model, one after another."""
        self.device = resolve_device(config.device) if ranks is None else ranks.device
        settle_kernels(self.device)
        if self.device.type == "cpu" and (threads := preset.cpu_threads or computed.threads):
            torch.set_num_threads(threads)
        torch.manual_seed(config.seed)
        self.model: GrowableModel = (preset_host(preset) if model is None else model).to(self.device)
        self.channels_last = self.device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        if self.channels_last:
            self.model.use_channels_last()
        self.amp_dtype = PRECISIONS[config.precision or default_precision(config.device)]
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype is torch.float16 else None
        self.data = data.to(self.device)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.host_optimizer = self._optimizer(self.model.host_parameters(), preset.lr)
        self.seed_optimizers: dict[str, torch.optim.Optimizer] = {}
        self._announced: dict[str, SeedGerminated] = {}
        """Germinations folded whose transition (germinate or build) the model has not carried out yet."""
        if build_up_front:
            self._build_architecture(config.architecture)

    def _optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        p = self.preset
        return make_optimizer(p.optimizer, params, lr, p.weight_decay, p.momentum)

    def _build_architecture(self, architecture: list[tuple[str, str]]) -> None:
        """The `scratch` baseline as logs written before its `build` events re-execute (`--verify`): seeds
        built into the host, without events, before `RunStarted`. New runs build from events (`realize`)."""
        for i, (slot, blueprint) in enumerate(architecture):
            if slot not in self.model.slot_names:
                raise BadInput(f"architecture names unknown slot {slot!r} (slots: {', '.join(self.model.slot_names)})")
            self._join_host(self.model.build(slot, f"built{i + 1}-{slot}", blueprint))

    def _join_host(self, params: list[nn.Parameter], seed_optimizer: torch.optim.Optimizer | None = None) -> None:
        """A seed's parameters join the host optimizer's one group: one group keeps the optimizer's step a single
        fused update however much the host grew. A fossilized seed's keep the state its own optimizer built (Adam's
        moments and step count, SGD's momentum) when the preset says so (`fossils_keep_state`); otherwise, and for a
        seed built straight into the host, their state starts fresh. Started afresh, Adam's first steps move every
        weight by about the full learning rate whatever its gradient: a jolt to the network the seed has just
        joined (docs/notes/growth.md measures what it costs the grown model)."""
        self.host_optimizer.param_groups[0]["params"].extend(params)
        if seed_optimizer is not None and self.preset.fossils_keep_state:
            for p in params:
                if p in seed_optimizer.state:
                    self.host_optimizer.state[p] = seed_optimizer.state[p]

    # ---- carrying out lifecycle events ---------------------------------------------------------

    def realize(self, event: Event) -> None:
        """Carry out on the model an event the lifecycle has accepted. A germination is built at its
        transition (`germinate`, or `build` straight into the host); its size must be what the garden counted."""
        if isinstance(event, SeedGerminated):
            self._announced[event.seed_id] = event
        elif isinstance(event, SeedTransitioned):
            if event.trigger in ("germinate", "build"):
                self._plant(self._announced.pop(event.seed_id), event.trigger)
            else:
                self._transition(event.seed_id, SeedStage(event.to_stage))

    def _plant(self, germinated: SeedGerminated, trigger: str) -> None:
        g = germinated
        if trigger == "build":
            params = self.model.build(g.slot, g.seed_id, g.blueprint)
            self._join_host(params)
            count = sum(p.numel() for p in params)
        else:
            count = self.model.germinate(g.slot, g.seed_id, g.blueprint)
        if count != g.params:
            raise RunFailed(f"{g.seed_id}: the lifecycle counted {g.params:,} parameters for {g.blueprint} in "
                            f"{g.slot}, the model built {count:,}")

    def _transition(self, seed_id: str, stage: SeedStage) -> None:
        model = self.model
        if stage is SeedStage.TRAINING:
            model.start_training(seed_id)
            self.seed_optimizers[seed_id] = self._optimizer(model.seed_parameters(seed_id), self.preset.seed_lr)
        elif stage is SeedStage.BLENDING:
            steps = max(1, self.config.lifecycle.blend_epochs * self.data.steps(self.preset.batch_size))
            model.start_blending(seed_id, steps, self.config.blend_schedule)
        elif stage is SeedStage.FOSSILIZED:
            self._join_host(model.fossilize(seed_id), self.seed_optimizers.pop(seed_id, None))
        elif stage is SeedStage.CULLED:
            model.cull(seed_id)
            self.seed_optimizers.pop(seed_id, None)

    def _anneal(self, epoch: int) -> None:
        """Set every optimizer's rate for `epoch`: the preset's rates times `anneal_scale` (`config` is resolved).
        Every optimizer alive when the epoch's steps begin gets it, also a seed's created just before (at
        the previous epoch's decision or this epoch's tick): no step runs at a rate set anywhere else."""
        scale = anneal_scale(epoch, self.config.epochs, self.config.anneal_epochs)
        for group in self.host_optimizer.param_groups:
            group["lr"] = self.preset.lr * scale
        for optimizer in self.seed_optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = self.preset.seed_lr * scale

    # ---- one epoch -----------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        self._anneal(epoch)
        self.model.train()
        self._health = {sid: HealthMeter(self.device) for sid in self.seed_optimizers}
        # per shard: a rank's sums are its own until the epoch's end adds them up
        self._loss_sum = torch.zeros(self.shards, device=self.device)
        self._seed_loss = {sid: torch.zeros(self.shards, dtype=torch.float64, device=self.device)
                           for sid in self.model.training_seeds()}
        self._seen = 0
        measured = self.config.telemetry != "minimal" and (self.ranks is None or self.ranks.leader)  # rank 0 logs
        self._layers = LayerGradients(self.model.placed_parameters()) if measured else None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _inputs(self, x) -> tuple:
        """The model's positional arguments for a batch's `x`, images in the channels-last layout where it runs."""
        return tuple(t.contiguous(memory_format=torch.channels_last)
                     if self.channels_last and isinstance(t, torch.Tensor) and t.dim() == 4 else t
                     for t in positional(x))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step of host and seeds on one batch. Training seeds learn in isolation: their
        gradients come from `isolated_output` through `autograd.grad`, so no host `.grad` is touched. Nothing is
        read back from the device (the loss and the seeds' statistics add up there)."""
        model = self.model
        if self.preset.augment:
            x = augment(x, self.generator)
        self._seen += examples_in(y)  # the whole batch's, on every rank
        if self.ranks is not None:  # this process's part of the batch, its gradient summed with the other ranks'
            x, y, count, weight = self.ranks.shard(x, y)
            self._passes(x, y, count)
            self.ranks.reduce_gradients(model.parameters(), weight)
        elif self.shards > 1:
            self._passes_as_ranks(x, y)
        else:
            self._passes(x, y, examples_in(y))
        optimizers = [self.host_optimizer, *self.seed_optimizers.values()]
        if self.scaler is not None:  # the statistics below measure the true gradients
            for opt in optimizers:
                self.scaler.unscale_(opt)
        for sid, meter in self._health.items():
            meter.add(_grad_norm(model.seed_parameters(sid), self.device))
        if self._layers is not None:
            self._layers.add()
        if self.scaler is None:
            for opt in optimizers:
                opt.step()
        else:
            for opt in optimizers:
                self.scaler.step(opt)
            self.scaler.update()
        model.step_blending()

    def _passes(self, x: torch.Tensor, y: torch.Tensor, count: int, part: int = 0) -> None:
        """The backward pass of the model and the isolated pass of each training seed on `count` examples (the
        batch, or one shard of it), into fresh gradients; their losses add to shard `part`'s sums."""
        model = self.model
        inputs = self._inputs(x)
        with self._autocast():
            loss = self.data.loss(model(*inputs), y)
        self.host_optimizer.zero_grad(set_to_none=True)
        for opt in self.seed_optimizers.values():
            opt.zero_grad(set_to_none=True)
        self._scaled(loss).backward()
        first = isolated_examples(examples_in(y), self.config.lifecycle.isolated_fraction)
        for sid in model.training_seeds():
            params = model.seed_parameters(sid)
            with self._autocast():
                isolated = self.data.loss(model.isolated_output(sid, *inputs, examples=first), rows(y, 0, first))
            for p, g in zip(params, torch.autograd.grad(self._scaled(isolated), params)):
                p.grad = g
            # the mean over the first examples stands for the mean over all `count` (the epoch's mean divides by all)
            self._seed_loss[sid][part] += isolated.detach().double() * count
        self._loss_sum[part] += loss.detach() * count

    def _passes_as_ranks(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The step's passes as `shards` ranks made them (`esper.tolaria.ranks`, re-executed in one process): each
        rank's shard in turn, the parts of the gradient summed as their all-reduce sums them, and the
        normalisation buffers rank 0's: the other shards' passes leave them as rank 0's passes left them."""
        model, summed, grads, rank0_buffers = self.model, None, [], []
        for rank in range(self.shards):
            xs, ys, count, weight = shard(x, y, rank, self.shards)
            self._passes(xs, ys, count, part=rank)
            grads, part = scaled_gradients(model.parameters(), weight)
            summed = part if summed is None else summed.add_(part)
            if rank == 0:
                rank0_buffers = [(b, b.clone()) for b in model.buffers()]
        for b, kept in rank0_buffers:
            b.copy_(kept)
        set_gradients(grads, summed)

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def epoch_totals(self) -> tuple[float, dict[str, float], dict[str, float]]:
        """The epoch's training loss and, per seed, gradient health and own loss (means; a seed whose loss is not
        finite is left out), read from the device in one go. With `ranks`, the losses are summed over every
        process's shards (every rank calls this once per epoch, at the same point: it also makes their buffers
        rank 0's); the health needs no sum, every rank measured it on the same all-reduced gradients."""
        seeds, losses = list(self._health), list(self._seed_loss)
        sums = torch.stack([self._loss_sum.double(), *(self._seed_loss[sid] for sid in losses)]).sum(dim=1)
        if self.ranks is not None:
            sums = self.ranks.reduce_epoch(sums, self.model)
        seen = max(self._seen, 1)
        train_loss = sums[:1].float() / seen  # in float32, as the loss itself
        health = [self._health[sid].total for sid in seeds]
        values = torch.cat([train_loss.double(), sums[1:], *(h.view(1) for h in health)]).tolist()
        # JSON has no NaN or infinity: a seed whose own loss blew up is logged with no loss (and, its
        # gradients being non-finite, zero health), which is what the automatic cull looks for.
        seed_loss = {sid: v / seen for sid, v in zip(losses, values[1:1 + len(losses)]) if math.isfinite(v)}
        return values[0], {sid: v / max(self._health[sid].steps, 1)
                           for sid, v in zip(seeds, values[1 + len(losses):])}, seed_loss

    def end_epoch(self, epoch: int, earlier_losses: Sequence[float] = ()) -> EpochStats:
        """The epoch's measurements; `RunFailed` if the host has diverged (`divergence`, judged against
        `earlier_losses`, the run's training losses so far), before any of it is logged."""
        train_loss, health, seed_loss = self.epoch_totals()
        if (diverged := divergence(epoch, train_loss, earlier_losses, self.preset.divergence_epochs)) is not None:
            raise RunFailed(diverged)
        stats = self._measure(train_loss, health, seed_loss)
        return attrs.evolve(stats, diagnostics=self._diagnostics(epoch))

    def _diagnostics(self, epoch: int) -> dict:
        """What the telemetry profile asks for beyond the gate signals."""
        out = self._layers.report() if self._layers is not None else {}
        if self.config.telemetry == "diagnostic" and (epoch - 1) % SHARPNESS_EVERY == 0:
            x, y = self.data.examples(SHARPNESS_EXAMPLES)
            value = sharpness(self.model, x, y, seed=self.config.seed * 100_003 + epoch, loss_fn=self.data.loss)
            if math.isfinite(value):  # JSON has no NaN: a curvature that overflowed is left out, not logged as null
                out["sharpness"] = value
        return out

    @torch.no_grad()
    def _measure(self, train_loss: float, health: dict[str, float], seed_loss: dict[str, float]) -> EpochStats:
        model = self.model
        val_loss, val_acc, isolated_acc = self.evaluate("val", isolated=model.training_seeds())
        if not math.isfinite(val_loss):
            raise RunFailed(f"validation loss is {val_loss}: the model diverged")
        telemetry = []
        for sid in model.live_seeds():
            stage = model.stage(sid)
            if stage is SeedStage.TRAINING:
                contribution = isolated_acc[sid] - val_acc
            elif stage is SeedStage.BLENDING:
                with model.forced_alpha(sid, 0.0):
                    contribution = val_acc - self.evaluate("val")[1]
            else:
                contribution = None
            telemetry.append(SeedTelemetry(
                seed_id=sid, alpha=model.alpha(sid), gradient_health=health.get(sid, 0.0),
                seed_loss=seed_loss.get(sid), contribution=contribution,
            ))
        return EpochStats(train_loss, val_loss, val_acc, model.param_count(), telemetry)

    @torch.no_grad()
    def evaluate(self, split: str, isolated: list[str] = ()) -> tuple[float, float, dict[str, float]]:
        """Loss and accuracy on `split`; with `isolated`, also each training seed's accuracy when fully in."""
        model = self.model
        model.eval()
        loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seed_correct = {sid: torch.zeros((), device=self.device) for sid in isolated}
        n = 0
        for x, y in self.data.batches(split, 1024):
            inputs = self._inputs(x)
            with self._autocast():
                output = model(*inputs)
                loss += self.data.loss_sum(output, y)
                correct += self.data.correct(output, y)
                for sid in isolated:
                    seed_correct[sid] += self.data.correct(model.isolated_output(sid, *inputs), y)
            n += examples_in(y)
        model.train()
        values = (torch.stack([loss, correct, *seed_correct.values()]) / n).tolist()  # one read
        if not 0.0 <= values[1] <= 1.0:  # a user's score (esper.fit) that is not the fraction right on every batch
            raise RunFailed(f"the {split} accuracy came out {values[1]:.6g}: score(output, y) must give the fraction of "
                            "each batch the model gets right, 0..1")
        return values[0], values[1], dict(zip(seed_correct, values[2:]))


def _grad_norm(params: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
