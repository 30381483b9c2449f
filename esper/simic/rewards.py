"""The reward of one environment step (one epoch), from what the log holds.

A step is the decision after epoch t and what epoch t+1 made of it. Its reward has four components,
each with its own weight (`RewardConfig`) and each recomputable from the events alone:

* accuracy: the change of validation accuracy, `acc[t+1] - acc[t]` (`EpochEnded.val_accuracy`);
* contribution: when the decision fossilized a seed, the counterfactual contribution it was last
  measured with (`SeedTelemetry.contribution`: accuracy with it minus with its α forced to 0). It is
  credited once, when the seed joins the host, so keeping a seed blending forever earns nothing;
* params: minus the change of `log(params / host_params)` (`EpochEnded.params`, `RunStarted.host_params`).
  Summed over an episode it is minus the log of (host + added params) over host params: growth is
  charged when it happens, and a culled seed gives its charge back. With a parameter budget B
  (`RewardConfig.param_budget`), the charge is on `log(max(params, B) / max(host_params, B))`: growth
  within the budget is free and only what exceeds it costs, so the weight states how hard the budget is
  rather than an exchange rate between accuracy and size;
* terminal: at the last step, the final validation accuracy (`RunFinished.val_accuracy`).
"""

import math

import msgspec

from esper.errors import BadInput

COMPONENTS = ("accuracy", "contribution", "params", "terminal")


class RewardConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Weights of the reward's components and the parameter budget. Stored in every policy file and in every
    `PolicyUpdated`."""

    accuracy: float = 1.0
    """Weight of the step's change in validation accuracy (a fraction, 0..1)."""
    contribution: float = 0.1
    """Weight of the counterfactual contribution of a seed at the step it fossilizes. Kept small: the
    accuracy component already pays for what a seed adds, and a large weight rewards many small seeds."""
    params: float = 0.075
    """Weight of the parameter cost: the step's change of log(params / host params). It sets the
    accuracy/size trade-off (benchmarks/policy.py, 20 CPU minutes of PPO on mnist1d: 0.1 learned
    ~2.4k-parameter models at 79 %, 0.075 ~11.5k at 93 %, 0.02 ~25k at 93 %)."""
    terminal: float = 1.0
    """Weight of the final validation accuracy, paid at the episode's last step."""
    param_budget: int = 0
    """Parameters (host included) that cost nothing: only growth beyond it is charged. 0: no budget,
    every parameter added to the host costs."""

    def __post_init__(self) -> None:
        if self.param_budget < 0:
            raise BadInput(f"param_budget must be 0 (none) or a parameter count, got {self.param_budget}")

    def stats(self) -> dict[str, float]:
        """The weights and the budget as `PolicyUpdated.stats` entries (`reward.accuracy`, ..., `reward.param_budget`)."""
        return {f"reward.{k}": float(v) for k, v in msgspec.structs.asdict(self).items()}


class StepOutcome(msgspec.Struct, frozen=True):
    """What a reward reads of one step."""

    accuracy_before: float
    accuracy_after: float
    params_before: int
    params_after: int
    host_params: int
    fossilized_contribution: float
    """Sum of the last measured contributions of the seeds this step's decision fossilized (0 if none)."""
    final: bool
    """The episode's last step: `accuracy_after` and `params_after` are the run's final numbers."""


def components(outcome: StepOutcome, param_budget: int = 0) -> dict[str, float]:
    """The unweighted components of a step's reward (`param_budget` shapes the params component)."""
    free = max(outcome.host_params, param_budget, 1)

    def size(params: int) -> float:
        return math.log(max(params, free) / free)

    return {
        "accuracy": outcome.accuracy_after - outcome.accuracy_before,
        "contribution": outcome.fossilized_contribution,
        "params": -(size(outcome.params_after) - size(outcome.params_before)),
        "terminal": outcome.accuracy_after if outcome.final else 0.0,
    }


def reward(parts: dict[str, float], config: RewardConfig) -> float:
    return sum(getattr(config, name) * parts[name] for name in COMPONENTS)
