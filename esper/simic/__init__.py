"""Gym: reinforcement learning of Tamiyo policies. PPO online over vectorized training runs, IQL
offline from event logs, both reading their experience through one dataset projection of the log."""
