"""`esper ppo` and `esper iql` take every default from their learner's config struct: none is written twice."""

import msgspec
import pytest
import typer.main

import esper.cli  # noqa: F401 - registers the commands
from esper.cli.app import app
from esper.simic.config import IQLConfig, PPOConfig

ALIASES = {"lr": "learning_rate", "reward_accuracy": "reward.accuracy", "reward_contribution": "reward.contribution",
           "reward_params": "reward.params", "reward_terminal": "reward.terminal", "param_budget": "reward.param_budget"}
"""Options whose flag names users know differ from the field they set."""
AS_GIVEN = {"devices": lambda text: tuple(text.split(",")), "target_kl": lambda value: value or None}
"""Options given as text or 0 that the command turns into the field's value."""


def _defaults(command: str) -> dict[str, object]:
    click_app = typer.main.get_command(app)
    return {p.name: p.default for p in click_app.commands[command].params}


def _field(config: msgspec.Struct, path: str) -> object:
    for name in path.split("."):
        config = getattr(config, name)
    return config


@pytest.mark.parametrize("command, config", [("ppo", PPOConfig()), ("iql", IQLConfig())])
def test_every_option_that_sets_a_field_defaults_to_the_field(command, config):
    fields = {f.name for f in msgspec.structs.fields(config)} | {a for a in ALIASES.values()}
    checked = 0
    for name, default in _defaults(command).items():
        path = ALIASES.get(name, name)
        if path.split(".")[0] not in fields and path not in fields:
            continue  # --out, --json, --workspace, --init, --resume: the job's, not the config's
        value = AS_GIVEN.get(name, lambda v: v)(default)
        assert value == _field(config, path), f"esper {command} --{name.replace('_', '-')} defaults to {default!r}"
        checked += 1
    assert checked >= (20 if command == "ppo" else 13), f"only {checked} options of esper {command} map to its config"
