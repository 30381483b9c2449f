"""The settings of Simic's two learners, PPO and IQL: plain structs without torch, so that the command line
takes its defaults from them (no default is written twice) and a job's checkpoint stores them whole."""

import msgspec

from esper.simic.rewards import RewardConfig


class PPOConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a PPO job depends on; stored in its checkpoint."""

    task: str = "mnist1d"
    """Task of the training runs (one episode = one run of this task)."""
    n_envs: int = 4
    """Runs played in lock-step per update (the batch holds n_envs × epochs steps)."""
    episodes: int = 8
    """Episodes to play in all; the last update plays fewer runs if n_envs does not divide it."""
    epochs: int = 0
    """Epochs per episode (0: the task preset's budget)."""
    seed: int = 0
    """Seed of the policy's initialisation, its sampling, the minibatch order, and of the runs' seeds."""
    devices: tuple[str, ...] = ("cpu",)
    """Devices of the runs, used round-robin."""
    telemetry: str = "minimal"
    """Telemetry profile of the runs (the policy reads none of the extra diagnostics)."""
    hidden: int = 64
    """Width of the actor's and the critic's two hidden layers."""
    learning_rate: float = 5e-4
    """Adam step size."""
    gamma: float = 0.99
    """Discount per epoch."""
    gae_lambda: float = 0.95
    """λ of generalized advantage estimation."""
    update_epochs: int = 4
    """Passes over each batch."""
    minibatches: int = 4
    """Minibatches per pass."""
    clip_coef: float = 0.2
    """PPO's ratio clip ε."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus (summed over the heads an action uses)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    target_kl: float | None = 0.03
    """Stop the update's passes once the approximate KL exceeds this (None: never)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    shared_baseline: bool = True
    """Centre each step's advantage on the other episodes of its update at the same epoch (`centre_per_step`)."""
    reward: RewardConfig = RewardConfig()
    """Weights of the reward's components (also logged in every `PolicyUpdated`)."""
    max_params: int = 0
    """Hard cap on the runs' size (`LifecycleConfig.max_params`): germinations beyond it are masked, so the
    policy learns within it; its file keeps the cap as the default of `esper run` (0: none)."""
    init_temperature: float = 1.0
    """With `--init`: divide the starting policy's logits by this. Its greedy choices stay the same and its
    sampling is flatter: a policy learnt from logs (IQL) gives the choices its data never made a
    probability near 0, which PPO would then never sample and an entropy bonus lifts too slowly."""
    critic_warmup: int = 0
    """First updates that train only the critic, the actor frozen. For a job that starts from another policy
    (`--init`): that policy's critic (IQL's is an optimistic expectile value) has not learnt these returns,
    and the actor's first steps would follow its errors."""
    select_every: int = 0
    """Checkpoint selection: every this many updates, and once before the first, play the greedy policy on
    `select_runs` fixed runs; the policy file holds the best by mean return so far (0: the latest update's).
    Updates after the last selection live only in the checkpoint's training state."""
    select_runs: int = 4
    """Runs (seeds of their own, never rollouts') that score the greedy policy for checkpoint selection."""
    workers: int = 1
    """Ray workers that play an update's episodes, one episode a task, each next one on the first worker free (1: here,
    without Ray). Changes no decision, only the wall time: a CPU run trains on one thread, so give as many as there
    are cores to spare (at most `n_envs`)."""


class IQLConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything an IQL job depends on."""

    task: str = "mnist1d"
    """Task whose runs make the dataset (runs of other tasks are skipped)."""
    steps: int = 10_000
    """Gradient steps."""
    batch_size: int = 256
    """Transitions per gradient step, drawn uniformly with replacement."""
    learning_rate: float = 3e-4
    """Adam step size of Q, V and the policy."""
    gamma: float = 0.99
    """Discount per epoch."""
    expectile: float = 0.7
    """τ of V's expectile regression (0.5: the mean, i.e. SARSA; towards 1: the best action seen)."""
    temperature: float = 3.0
    """β of the advantage weights exp(β·A)."""
    max_weight: float = 100.0
    """Clip of the advantage weights."""
    tau: float = 0.005
    """Polyak rate of the target Q."""
    hidden: int = 64
    """Width of every network's two hidden layers."""
    seed: int = 0
    """Seed of initialisation and minibatch sampling."""
    log_every: int = 500
    """Steps between two `PolicyUpdated` events; the last step always logs one (0: only it), as the job's summary
    reads it."""
    reward: RewardConfig = RewardConfig()
    """Weights of the reward's components, applied when the dataset is built."""
