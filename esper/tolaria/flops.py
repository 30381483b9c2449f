"""The training compute of a logged run, read from its log.

The log says which architecture trained in every epoch: the host (`RunStarted.preset`), and every seed's
germination and stage changes. With the task's input shape that fixes what each training step computed:
the forward and backward pass of the model as it stood, and each training seed's isolated pass. This
module counts that with torch's `FlopCounterMode` on the meta device (shapes only: no arithmetic, no
memory, no random draw), once per distinct architecture, so the compute of any run in a workspace is a
projection of its events like every other number Esper reports.

Not counted: evaluation passes (the validation measurements every controller's run makes alike) and
optimizer updates (elementwise, a few FLOPs per parameter).
"""

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from esper.kasmina import GrowableModel, example_input, isolated_examples, preset_host
from esper.leyline.events import EpochEnded, Event, RunStarted, SeedGerminated, SeedTransitioned
from esper.leyline.stages import SeedStage


# Torch's counter knows the attention kernels of CUDA, not the CPU's, and on the meta device attention runs as
# matrix products (two forward, four backward). The CPU kernels are counted as those products, so a step counted
# as it trains on CPU and the same step projected here on meta agree.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return 2 * sdpa_flop_count(query_shape, key_shape, value_shape)


class EpochCompute(NamedTuple):
    """The FLOPs of one epoch's training steps."""

    total: int
    """Every step's forward and backward pass of the model, and each training seed's isolated pass."""
    isolated: int
    """Of `total`, the isolated passes: what training seeds apart from the host's gradient costs."""


def epoch_flops(events: Iterable[Event], train_examples: int) -> dict[int, EpochCompute]:
    """Epoch → FLOPs of that epoch's training steps, for a run whose events these are, on inputs of the shape its
    own host takes (mnist1d: (1, 40); text: (context,), whatever context the run chose); `train_examples` is the
    examples of an epoch (the size of the training split; text: the preset's `epoch_windows`)."""
    out: dict[int, EpochCompute] = {}
    counted: dict[tuple, tuple[float, float]] = {}
    model: GrowableModel | None = None
    announced: dict[str, SeedGerminated] = {}
    batch_size, fraction = 0, 1.0
    for event in events:
        if isinstance(event, RunStarted):
            with torch.device("meta"):
                model = preset_host(event.preset)
            batch_size, fraction = event.preset.batch_size, event.config.lifecycle.isolated_fraction
        elif model is None:
            continue
        elif isinstance(event, SeedGerminated):
            announced[event.seed_id] = event
        elif isinstance(event, SeedTransitioned):
            _carry_out(model, event, announced)
        elif isinstance(event, EpochEnded):
            shape = _architecture(model)
            if shape not in counted:
                counted[shape] = tuple(f / batch_size for f in _step_flops(model, batch_size, fraction))
            total, isolated = counted[shape]
            out[event.epoch] = EpochCompute(round(total * train_examples), round(isolated * train_examples))
    return out


def _carry_out(model: GrowableModel, event: SeedTransitioned, announced: dict[str, SeedGerminated]) -> None:
    """What the trainer does to the model for this transition, without optimizers or data."""
    with torch.device("meta"):
        if event.trigger == "germinate":
            g = announced.pop(event.seed_id)
            model.germinate(g.slot, g.seed_id, g.blueprint)
        elif event.trigger == "build":
            g = announced.pop(event.seed_id)
            model.build(g.slot, g.seed_id, g.blueprint)
        elif event.to_stage == SeedStage.TRAINING.value:
            model.start_training(event.seed_id)
        elif event.to_stage == SeedStage.BLENDING.value:
            model.start_blending(event.seed_id, steps=1)
        elif event.to_stage == SeedStage.FOSSILIZED.value:
            model.fossilize(event.seed_id)
        elif event.to_stage == SeedStage.CULLED.value:
            model.cull(event.seed_id)


def _architecture(model: GrowableModel) -> tuple:
    """What a training step's cost depends on: every seed in the model, by slot, blueprint and stage."""
    return tuple(sorted((slot, seed.blueprint, seed.stage.value)
                        for slot, holder in model.slots.items() for seed in holder.seeds()))


def _step_flops(model: GrowableModel, batch_size: int, isolated_fraction: float = 1.0) -> tuple[float, float]:
    """FLOPs of one training step on a batch, as `Trainer.train_step` computes it: (the whole step, its isolated
    passes, on `isolated_fraction` of the batch)."""
    x = example_input(model.host, batch_size, device="meta")
    model.train()
    host, isolated = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with host:
        _loss(model(x)).backward()
    first = isolated_examples(batch_size, isolated_fraction)
    with isolated:
        for seed_id in model.training_seeds():
            params = model.seed_parameters(seed_id)
            torch.autograd.grad(_loss(model.isolated_output(seed_id, x, examples=first)), params)
    model.zero_grad(set_to_none=True)
    return float(host.get_total_flops() + isolated.get_total_flops()), float(isolated.get_total_flops())


def _loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of class logits (B, C), or of next-byte logits (B, T, 256) at every position."""
    y = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.flatten(0, -2), y.flatten())
