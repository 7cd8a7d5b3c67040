"""The run planner as pure functions: a request (and a resumed run's record) in, a plan out."""

import json
from pathlib import Path

import pytest

from charrnn.config import PRESETS, ModelConfig, TrainConfig
from charrnn.errors import CharRNNError
from charrnn.records import RunRecord
from charrnn.training.plan import SMALL_TEXT
from charrnn.training.request import RunRequest, plan_run, run_name, train_config


def planned(request: RunRequest, train_chars: int = 1_000_000, **kwargs):
    return plan_run(request, train_config(request), vocab_size=65, train_chars=train_chars, **kwargs)


def resumed_record(**train) -> RunRecord:
    return RunRecord(
        model=ModelConfig(65, layers=2, hidden_size=64),
        vocab={},
        text_options={},
        train=TrainConfig(**{"lr": 1e-3, "max_time": 600.0, **train}),
        corpus={"sources": [], "sha256": "x"},
        preset="medium",
    )


def test_flags_given_win_over_the_preset_and_the_rest_comes_from_it():
    plan = planned(RunRequest(settings={"hidden_size": 128, "lr": 1e-2, "max_time": 60.0}))
    assert plan.preset == "small"
    assert plan.model.hidden_size == 128 and plan.train.lr == 1e-2
    assert plan.model.layers == PRESETS["small"]["layers"] and plan.train.ema == PRESETS["small"]["ema"]
    assert plan.model.vocab_size == 65


def test_a_small_text_for_a_long_budget_is_planned_with_more_regularisation():
    plan = planned(RunRequest(settings={"max_time": 180.0}), train_chars=90_000)
    assert plan.model.dropout == SMALL_TEXT["dropout"] and plan.train.weight_decay == SMALL_TEXT["weight_decay"]
    assert "small text" in plan.why
    # ...unless the user says otherwise
    plan = planned(RunRequest(settings={"max_time": 180.0, "dropout": 0.05}), train_chars=90_000)
    assert plan.model.dropout == 0.05


def test_a_named_preset_is_taken_as_it_is():
    plan = planned(RunRequest(preset="medium", settings={"max_time": 30.0}), train_chars=90_000)
    assert plan.model.layers == 2 and plan.train.lr == PRESETS["medium"]["lr"] and "as asked" in plan.why


def test_a_resumed_run_keeps_its_settings_but_takes_a_new_budget_and_the_flags_given():
    record = resumed_record(max_steps=None, epochs=None)
    config = train_config(RunRequest(resume=Path("run"), settings={"max_steps": 5000}), record)
    assert config.max_steps == 5000 and config.max_time is None  # a new budget replaces the old ones
    assert config.lr == 1e-3  # stored
    config = train_config(RunRequest(resume=Path("run"), settings={"lr": 5e-4}), record)
    assert config.lr == 5e-4 and config.max_time == 600.0
    plan = plan_run(
        RunRequest(resume=Path("run")),
        config,
        vocab_size=65,
        train_chars=10**6,
        base_model=record.model,
        resumed=record,
    )
    assert plan.preset == "medium" and plan.model == record.model and plan.why == ""


def test_the_model_of_a_resumed_or_fine_tuned_run_cannot_change():
    record = resumed_record()
    request = RunRequest(resume=Path("runs/a"), settings={"hidden_size": 128, "layers": 2})
    with pytest.raises(CharRNNError, match="runs/a: --hidden-size differs from the run being resumed"):
        plan_run(request, record.train, vocab_size=65, train_chars=10**6, base_model=record.model, resumed=record)
    request = RunRequest(init_from=Path("runs/a"), settings={"cell": "gru"})
    with pytest.raises(CharRNNError, match="--cell cannot change when fine-tuning"):
        planned(request, base_model=record.model)


def test_a_short_text_lowers_the_batch_and_a_tiny_one_is_refused():
    plan = planned(RunRequest(settings={"max_steps": 10}), train_chars=5 * 64 + 1)
    assert plan.train.batch_size == 5 and "batch size lowered from 16 to 5" in plan.notes[0]
    with pytest.raises(CharRNNError, match="notes.txt: 50 training characters are too few for sequence length 64"):
        planned(RunRequest(corpus=["notes.txt"], settings={"max_steps": 10}), train_chars=50)


def test_requests_that_cannot_work_are_refused_before_anything_is_read():
    with pytest.raises(CharRNNError, match="exclude each other") as e:
        RunRequest(resume=Path("a"), init_from=Path("b")).check()
    assert e.value.exit_code == 2
    with pytest.raises(CharRNNError, match="--out applies to new runs"):
        RunRequest(resume=Path("a"), out=Path("b"), given=frozenset({"out"})).check()
    with pytest.raises(CharRNNError, match="--patience needs validation"):
        RunRequest(settings={"patience": 3, "val_fraction": 0.0}).check()
    with pytest.raises(CharRNNError, match="unknown setting 'hiden_size'"):
        RunRequest(settings={"hiden_size": 3})


def test_a_new_run_is_named_after_its_text_and_cell():
    assert run_name(RunRequest(corpus=["data/poems.txt"]), "gru", 0).startswith("poems-gru-19")
    assert run_name(RunRequest(), "lstm", 0).startswith("builtin-lstm-")
    assert run_name(RunRequest(corpus=["-"]), "lstm", 0).startswith("stdin-lstm-")


def test_the_run_record_round_trips_through_json():
    record = resumed_record()
    again = RunRecord.from_json(record.to_json())
    assert again == record and again.to_json()["format_version"] == 1
    with pytest.raises(CharRNNError, match="manifest.json: the run record lacks 'vocab'"):
        RunRecord.from_json({"model": {}}, "manifest.json")


def test_train_from_python_returns_the_run_and_prints_nothing(tmp_path, text_file, capfd):
    from charrnn.api import train

    tiny = {"hidden_size": 32, "embedding_size": 8, "batch_size": 8, "seq_len": 32}
    result = train(text_file, out=tmp_path / "run", max_steps=30, seed=3, **tiny)
    assert result.run_dir == tmp_path / "run" and result.steps == 30 and result.stopped_by == "max_steps"
    assert result.kept is not None and result.val.nats < 3.5  # better than uniform over the alphabet
    record = RunRecord.from_json(json.loads((tmp_path / "run" / "run.json").read_text()))
    assert record.model.hidden_size == 32 and record.train.seed == 3
    assert capfd.readouterr() == ("", "")  # the library never prints
    with pytest.raises(CharRNNError, match="missing.txt"):
        train(tmp_path / "missing.txt", out=tmp_path / "other", max_steps=5, **tiny)
    with pytest.raises(CharRNNError, match="is not a duration"):
        train(text_file, max_time="soon")
