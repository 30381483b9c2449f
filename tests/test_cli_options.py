"""`esper ppo` and `esper iql` take every default from their learner's config struct: none is written twice."""

import inspect
from pathlib import Path
from typing import Optional

import msgspec
import pytest
import typer.main

import esper.cli  # noqa: F401 - registers the commands
from esper.cli.app import app, nonempty_path, path_value
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



def _parameters():
    """For every command: its name on the command line, its parameters' typer infos and their annotations, by name."""
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        signature = inspect.signature(command.callback).parameters
        params = {k: p.default for k, p in signature.items()
                  if isinstance(p.default, (typer.models.OptionInfo, typer.models.ArgumentInfo))}
        yield name, params, {k: p.annotation for k, p in signature.items()}


def _given(info: typer.models.ParameterInfo, value: str) -> list[str]:
    return [value] if isinstance(info, typer.models.ArgumentInfo) else [info.param_decls[0], value]


def test_every_command_reads_its_own_defaults():
    """Each command's line, with placeholders for what it requires, is read (defaults through their parsers: a
    default path goes through `path_option`'s) without running the command."""
    commands = typer.main.get_command(app).commands
    for name, params, _ in _parameters():
        required = [a for o in params.values() if o.default is ... for a in _given(o, "x")]
        with commands[name].make_context(name, required) as ctx:
            assert set(ctx.params) == set(params), name
    assert len(commands) >= 11


def test_an_empty_path_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """`-w ""`, `--out ""`, `--tensorboard ""` ...: a path given empty would quietly mean the current folder
    (records, schemas, event files written there). Each is refused when the command line is read, and nothing is
    written. A `Path` parameter declared without `path_option` is caught here too."""
    from cli_runner import invoke

    monkeypatch.chdir(tmp_path)
    checked = 0
    for name, params, annotations in _parameters():
        for pname, info in params.items():
            if annotations[pname] in (Path, Optional[Path]):
                assert info.parser is path_value, f"esper {name} {pname}: declare it with path_option"
            if info.parser not in (path_value, nonempty_path):
                continue
            required = [a for other, o in params.items() if o is not info and o.default is ... for a in _given(o, "x")]
            result = invoke(name, *required, *_given(info, ""))
            assert result.exit_code == 2, (name, pname, result.output)
            assert "an empty path" in result.stderr, (name, pname, result.stderr)
            checked += 1
    assert checked >= 19, f"only {checked} path parameters found"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["runs"], ["run", "--epochs", "1"]])
def test_a_blank_workspace_variable_is_refused_and_an_empty_one_is_unset(tmp_path, monkeypatch, command):
    """ESPER_WORKSPACE=" " would record into a folder named by a space, as `-w " "` would: refused, nothing written.
    ESPER_WORKSPACE="" is unset, as the shell's convention has it: ./runs."""
    from cli_runner import invoke, one_line_error

    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke(*command, workspace=" "))
    assert line == "esper: ESPER_WORKSPACE is blank: set it to a folder, or unset it for ./runs"
    assert list(tmp_path.iterdir()) == []
    unset = invoke("runs", workspace="")
    assert unset.exit_code == 0 and "no runs in runs yet" in unset.stderr, unset.stderr
