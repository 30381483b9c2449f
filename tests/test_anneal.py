"""The learning-rate anneal of a run's last epochs: its shape, that it acts, and that old logs keep replaying."""

import json

import pytest
from cli_runner import invoke, one_line_error

from esper.errors import BadInput
from esper.leyline import EpochEnded, Germinate, RunConfig, RunStarted, Wait, decode, encode
from esper.tamiyo.controllers import make_controller
from esper.tolaria.loop import ListSink, Session, execute, resolve_config
from esper.tolaria.trainer import anneal_scale
from esper.tolaria.tasks import TASKS

MNIST1D = TASKS["mnist1d"]


def test_the_rate_is_full_until_the_last_epochs_then_steps_down_towards_zero():
    scales = [anneal_scale(epoch, 25, 5) for epoch in range(1, 26)]
    assert scales[:20] == [1.0] * 20
    assert all(a > b for a, b in zip(scales[19:], scales[20:]))  # strictly falling over the last five
    assert 0 < scales[-1] < 0.1  # the last epoch still learns, a little
    assert [anneal_scale(epoch, 25, 0) for epoch in range(1, 26)] == [1.0] * 25
    short = [anneal_scale(epoch, 3, 5) for epoch in (1, 2, 3)]  # more anneal than epochs: all of them fall
    assert short[0] < 1.0 and short == sorted(short, reverse=True)


def test_a_run_takes_the_presets_anneal_unless_it_names_its_own():
    assert resolve_config(RunConfig()).anneal_epochs == 5  # mnist1d's
    assert resolve_config(RunConfig(anneal_epochs=0)).anneal_epochs == 0
    with pytest.raises(BadInput, match="anneal_epochs must not be negative"):
        resolve_config(RunConfig(anneal_epochs=-1))


def test_a_run_shorter_than_the_presets_anneal_anneals_over_all_of_it_and_a_longer_one_asked_for_is_refused(tmp_path):
    """A 1-epoch run used to take the preset's 5-epoch anneal and train at 7 % of its rate (the cosine's fifth
    step), its header saying "annealed over the last 1 epoch". A recorded config keeps its anneal: old logs
    re-execute as they trained."""
    assert [resolve_config(RunConfig(epochs=e)).anneal_epochs for e in (1, 3, 5, 25)] == [1, 3, 5, 5]
    assert anneal_scale(1, 1, 1) == pytest.approx(0.5)  # not anneal_scale(1, 1, 5), 0.067
    recorded = RunConfig(epochs=2, anneal_epochs=5)
    assert resolve_config(recorded) == resolve_config(resolve_config(recorded))
    assert resolve_config(recorded).anneal_epochs == 5
    result = invoke("run", "--epochs", "2", "--anneal-epochs", "3", workspace=tmp_path)
    assert one_line_error(result) == ("esper: anneal_epochs 3 is longer than the run's 2 epochs: give at most 2 "
                                      "(the whole run)")
    assert not list(tmp_path.glob("*.duckdb"))


def test_a_session_records_and_trains_with_the_resolved_config():
    sink = ListSink()
    session = Session(RunConfig(seed=2), sink)  # epochs 0 and anneal None: the preset's
    started = sink.events[0]
    session.close()
    assert isinstance(started, RunStarted)
    assert started.config == session.config == session.trainer.config == resolve_config(RunConfig(seed=2))
    assert (started.config.epochs, started.config.anneal_epochs) == (25, 5)


@pytest.mark.slow  # trains a six-epoch run
def test_every_optimizer_runs_at_the_annealed_rate_of_its_epoch():
    config = resolve_config(RunConfig(epochs=6, anneal_epochs=4, seed=1))
    session, seeds_checked = Session(config, ListSink()), 0
    while not session.done:
        session.begin_epoch()
        trainer = session.trainer
        scale = anneal_scale(session.epoch, 6, 4)
        rates = [g["lr"] for g in trainer.host_optimizer.param_groups]
        seed_rates = [g["lr"] for o in trainer.seed_optimizers.values() for g in o.param_groups]
        assert rates == [pytest.approx(trainer.preset.lr * scale)]
        assert seed_rates == [pytest.approx(trainer.preset.seed_lr * scale)] * len(seed_rates)
        seeds_checked += len(seed_rates) if scale < 1 else 0
        for x, y in trainer.data.batches("train", trainer.preset.batch_size, trainer.generator):
            trainer.train_step(x, y)
        session.end_epoch()
        session.decide(Germinate(slot="mid", blueprint="conv_light") if session.epoch == 1 else Wait(), "test")
        session.settle()
    assert seeds_checked >= 3, "the seed trained through the anneal, and its optimizer was checked"


def _epochs(anneal: int) -> list[EpochEnded]:
    sink = ListSink()
    execute(resolve_config(RunConfig(epochs=4, anneal_epochs=anneal, controller="static", seed=3)),
            make_controller("static", 3), sink)
    return [e for e in sink.events if isinstance(e, EpochEnded)]


@pytest.mark.slow  # trains two runs
def test_the_anneal_changes_only_the_epochs_it_covers():
    constant, annealed = _epochs(0), _epochs(2)
    assert constant[:2] == annealed[:2]  # same seed, same rates: the same first epochs, bit for bit
    assert all(a.train_loss != b.train_loss for a, b in zip(constant[2:], annealed[2:]))


def test_a_log_from_before_the_anneal_reads_as_constant_rates():
    started = RunStarted(preset=MNIST1D, config=resolve_config(RunConfig(seed=4)), host_params=1258)
    assert decode(encode(started)) == started
    old = json.loads(encode(started))  # as a v1 log wrote it: no anneal field, no preset
    old["schema_version"] = 1
    del old["config"]["anneal_epochs"], old["preset"], old["versions"]
    upcast = decode(json.dumps(old))
    assert upcast.config.anneal_epochs == 0 and upcast.config.seed == 4 and upcast.host_params == 1258
