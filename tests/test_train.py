import json
import math

import numpy as np
import pytest
import torch
from conftest import generated_text, run_record

from charrnn.data.batches import split
from charrnn.data.corpus import corpus_from_text
from charrnn.device import cpu_has_native_bf16, seed_everything
from charrnn.errors import CharRNNError
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.model.scoring import score
from charrnn.records import outcome
from charrnn.storage import checkpoints as checkpoint
from charrnn.storage import layout
from charrnn.training.averaging import WeightAverage
from charrnn.training.budget import learning_rate
from charrnn.training.optimizer import make_optimizer
from charrnn.training.report import Reporter
from charrnn.training.trainer import TrainConfig, Trainer


def make_trainer(tmp_path, text, **settings):
    corpus = corpus_from_text(text)
    seed_everything(0)
    model = CharRNN(ModelConfig(len(corpus.vocab), hidden_size=64, layers=1, embedding_size=16, dropout=0.0))
    defaults = {"batch_size": 4, "seq_len": 32, "lr": 1e-2, "warmup_steps": 5, "eval_every": 0, "max_steps": 200}
    config = TrainConfig(**{**defaults, **settings})
    return Trainer(
        model,
        corpus.ids,
        corpus.ids,
        config,
        tmp_path,
        run_record(model, corpus, config),
        torch.device("cpu"),
    )


def test_tiny_model_overfits_a_short_text(tmp_path):
    text = "hello world, this is a tiny text to memorise. " * 4
    trainer = make_trainer(tmp_path, text, max_steps=150, seq_len=15)  # 4 streams x 45 chars: all of it
    result = trainer.fit()
    assert result.val.nats < 0.3  # far below the uniform 2.9 nats: the text is memorised
    assert result.steps == 150 and result.checkpoint.exists()


def test_learning_rate_warms_up_then_decays():
    c = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, max_steps=100)
    assert learning_rate(c, 0, 0.0) == 0.1
    assert learning_rate(c, 9, 0.09) == 1.0
    assert abs(learning_rate(c, 100, 1.0) - 0.1) < 1e-9
    lrs = [learning_rate(c, s, s / 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_an_explicit_warm_up_is_honoured_and_the_default_fits_a_short_step_budget():
    assert learning_rate(TrainConfig(lr=1.0, max_steps=200), 19, 0.0) == 1.0  # default: 20, cut to a tenth (20)
    assert learning_rate(TrainConfig(lr=1.0, max_steps=50), 4, 0.0) == 1.0  # ...cut to 5
    assert learning_rate(TrainConfig(lr=1.0, max_steps=200, warmup_steps=100), 19, 0.0) == 0.2  # as given
    assert learning_rate(TrainConfig(lr=1.0, max_time=60, warmup_steps=100), 19, 0.0) == 0.2  # the same with time


def test_a_time_budgets_learning_rate_never_goes_back_up_when_the_end_is_planned_again():
    """The run re-measures what its end will cost; a smaller reserve lengthens the training time,
    which must not raise the rate again (it went 2.65e-3, 2.51e-3, 2.84e-3 in a user's run)."""
    from charrnn.training.budget import Budget, Position

    budget = Budget(TrainConfig(lr=1.0, max_time=100.0))
    budget.reserve = 40.0  # 60 s of training planned
    first = budget.learning_rate(Position(100, 0.1, 30.0))
    budget.reserve = 10.0  # then the end turns out cheaper: 90 s of training
    assert budget.learning_rate(Position(110, 0.11, 31.0)) <= first


def test_default_budget_is_three_minutes():
    assert TrainConfig().max_time == 180
    assert TrainConfig(max_steps=5).max_time is None


def test_max_time_is_respected(tmp_path):
    trainer = make_trainer(tmp_path, generated_text(5000), max_steps=None, max_time=1.0)
    result = trainer.fit()
    assert result.stopped_by == "max_time" and 1.0 <= result.elapsed < 2.0


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_precision_modes_give_finite_losses_close_to_fp32(tmp_path, precision):
    if precision == "bf16" and not cpu_has_native_bf16():
        with pytest.raises(CharRNNError, match="no native bf16") as e:
            make_trainer(tmp_path, generated_text(3000), precision="bf16")
        assert e.value.exit_code == 2
        return
    reference = make_trainer(tmp_path / "ref", generated_text(3000), max_steps=30, precision="fp32").fit()
    result = make_trainer(tmp_path / "p", generated_text(3000), max_steps=30, precision=precision).fit()
    assert math.isfinite(result.val.nats) and abs(result.val.nats - reference.val.nats) < 0.05


def test_early_stopping_triggers(tmp_path):
    # a learning rate of 0 never improves on the first evaluation: patience 2 stops two evaluations later
    trainer = make_trainer(tmp_path, generated_text(3000), lr=0.0, max_steps=1000, eval_every=5, patience=2)
    result = trainer.fit()
    assert result.stopped_by == "patience" and result.steps == 15


def test_validation_tail_is_capped():
    train, val = split(np.arange(1000), 0.5, val_max_chars=100)
    assert len(val) == 100 and len(train) == 900


def test_parallel_evaluation_matches_one_sequential_pass(tmp_path):
    """Scoring the text as 8 pieces side by side gives the single-stream figure: each piece warms up
    on the text before it instead of starting without context."""
    trainer = make_trainer(tmp_path, generated_text(6_000), max_steps=60)
    trainer.fit()
    ids, cpu = trainer.val_ids, torch.device("cpu")
    sequential = score(trainer.model, ids, cpu, streams=1, seq_len=64)
    warmed = score(trainer.model, ids, cpu, streams=8, seq_len=64)
    cold = score(trainer.model, ids, cpu, streams=8, seq_len=64, warmup_batches=0)
    assert warmed.characters == cold.characters == sequential.characters == len(ids) - 1
    assert abs(warmed.nats - sequential.nats) < 1e-4
    assert cold.nats - sequential.nats > 1e-3  # what the warm-up fixes: pieces starting without context


def test_ema_validates_and_saves_the_average_and_keeps_the_raw_weights_for_resuming(tmp_path):
    trainer = make_trainer(tmp_path, generated_text(3000), max_steps=40, ema=0.9)
    result = trainer.fit()
    average, raw = trainer.shipped.state_dict(), trainer.model.state_dict()
    assert not average["head.weight"].equal(raw["head.weight"])  # an average, not a copy
    loaded = checkpoint.load(result.checkpoint)
    for name, tensor in loaded.model.state_dict().items():
        assert tensor.equal(average[name]), name  # what is sampled and evaluated later
    assert result.val.nats == score(loaded.model, trainer.val_ids, torch.device("cpu"), dtype=trainer.dtype).nats
    saved_raw = checkpoint.restore_training(
        loaded, make_optimizer(trainer.model, trainer.config, trainer.device)
    ).weights
    assert all(saved_raw[name].equal(raw[name]) for name in raw)


def test_ema_follows_the_weights_closely_early_on():
    # the decay warms up as (1 + step) / (10 + step): after step 1 the average is mostly the new weights
    model = CharRNN(ModelConfig(10, hidden_size=8, embedding_size=4))
    average = WeightAverage(model, 0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model, step=1)
    moved = average.model.head.bias - (model.head.bias - 1.0)
    assert torch.allclose(moved, torch.full_like(moved, 1 - 2 / 11))


def test_a_time_budget_covers_validation_of_a_large_held_out_text(tmp_path, simulated_clock):
    """--max-time bounds the whole run, not just its steps: with 600,000 held-out characters (a final
    full validation of 6 s at the simulated reading speed), a 15-second run still ends within 10%."""
    clock = simulated_clock(step=0.1, read_speed=100_000)
    corpus = corpus_from_text(generated_text(1_200_000))
    train_ids, val_ids = split(corpus.ids, 0.5)
    seed_everything(0)
    model = CharRNN(ModelConfig(len(corpus.vocab), hidden_size=32, layers=1, embedding_size=8, dropout=0.0))
    config = TrainConfig(batch_size=8, seq_len=32, max_time=15.0, precision="fp32")

    class Scoring(Reporter):
        calls: list[dict] = []

        def scoring(self, record):
            self.calls.append(record)

    reporter = Scoring()
    trainer = Trainer(model, train_ids, val_ids, config, tmp_path, None, torch.device("cpu"), reporter=reporter)
    start = clock.now
    result = trainer.fit()
    wall = clock.now - start
    assert wall < 15.0 * 1.1, f"{wall:.1f} s for a 15 s budget"  # the tolerance: 10%
    assert result.stopped_by == "max_time" and result.elapsed <= wall
    assert result.val.characters == len(val_ids) - 1  # the final figure covers all of the held-out text
    periodic = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    # validated several times over the training time: up to 20, fewer when each validation (and the
    # save that goes with it) would otherwise take more than EVAL_SHARE of the time between them
    # (here the short budget)...
    assert 3 <= len(periodic) <= 21
    assert all(r["val_characters"] == trainer.pieces.characters < len(val_ids) / 2 for r in periodic)  # ...on a sample
    # what the dashboard shows: progress against the whole budget never goes back, and the last
    # scoring of the held-out text says how far it has got while it runs
    logs = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "progress" in r]
    assert all(a["progress"] <= b["progress"] for a, b in zip(logs, logs[1:]))
    assert abs(logs[-1]["progress"] - logs[-1]["time"] / 15.0) < 0.01
    done = [c["done"] for c in reporter.calls]
    assert done[0] == 0 and done[-1] == len(val_ids) - 1 and done == sorted(done)
    assert all(c["step"] == result.kept.step and c["characters"] == len(val_ids) - 1 for c in reporter.calls)
    assert reporter.calls[-1]["progress"] <= 1.0 and reporter.calls[-1]["time"] <= result.elapsed


@pytest.mark.parametrize("left", [0.3, -1.0])
def test_a_last_scoring_that_the_time_budget_cannot_pay_for_stops_and_says_what_it_covered(tmp_path, monkeypatch, left):
    """Another process taking the cores at the end must not make a timed run overrun by minutes:
    the last scoring stops at the deadline, and the figure says what it covers."""
    import time

    from charrnn.cli.display import held_out_figure

    corpus = corpus_from_text(generated_text(1_200_000))
    train_ids, val_ids = split(corpus.ids, 0.5)  # several seconds to score whole here
    seed_everything(0)
    model = CharRNN(ModelConfig(len(corpus.vocab), hidden_size=256, layers=1, embedding_size=16, dropout=0.0))
    config = TrainConfig(batch_size=16, seq_len=64, max_steps=20, eval_every=10, eval_chars=5_000, precision="fp32")
    trainer = Trainer(model, train_ids, val_ids, config, tmp_path, None, torch.device("cpu"))
    monkeypatch.setattr(Trainer, "_deadline", lambda self: time.perf_counter() + left)
    result = trainer.fit()
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["held_out_characters"] == len(val_ids) - 1
    figure = held_out_figure(
        saved["val_loss"],
        saved["val_characters"],
        saved["held_out_characters"],
        saved["kept"]["val_estimate"],
        saved["kept"]["val_estimate_standard_error"],
    )
    if left > 0:  # part of it scored: that part is the figure
        assert 0 < result.val.characters < len(val_ids) - 1 and result.kept.partial
        assert (
            f"on {result.val.characters + 1:,} of {len(val_ids):,} held-out characters (the time budget ran out)"
            in figure
        )
    else:  # no time at all: the periodic estimate stands, and says so
        assert result.val is None and result.kept.estimate == result.best_val_loss is not None
        error = result.kept.estimate_error
        assert error > 0 and figure.startswith(f"{result.best_val_loss:.4f} ±{2 * error:.3f} (")
        assert figure.endswith("(estimate: the time budget ran out before the whole held-out text)")


def test_scoring_stops_at_its_deadline():
    import time

    ids = corpus_from_text(generated_text(50_000)).ids
    model = CharRNN(ModelConfig(40, hidden_size=32, layers=1, embedding_size=8))
    cpu = torch.device("cpu")
    assert score(model, ids, cpu, deadline=time.perf_counter() - 1).characters == 0
    assert score(model, ids, cpu, deadline=time.perf_counter() + 600) == score(model, ids, cpu)


def test_the_periodic_estimate_scores_the_same_pieces_every_time():
    from charrnn.model.scoring import Pieces, score_pieces

    ids = corpus_from_text(generated_text(200_000)).ids
    a, b = Pieces.spread(len(ids), 30_000), Pieces.spread(len(ids), 30_000)
    assert np.array_equal(a.starts, b.starts) and a.characters <= 30_000
    assert a.starts[0] >= a.warmup and a.starts[-1] + a.length < len(ids)  # every piece reads text before it
    seed_everything(0)
    model = CharRNN(ModelConfig(40, hidden_size=32, layers=1, embedding_size=8))
    cpu = torch.device("cpu")
    first, second = score_pieces(model, ids, a, cpu), score_pieces(model, ids, b, cpu)
    assert first == second and first.characters == a.characters
    whole = score(model, ids, cpu)
    assert abs(first.nats - whole.nats) < 0.05  # an estimate of the whole figure


def test_the_periodic_estimate_comes_with_a_standard_error_that_covers_the_whole_figure():
    """A held-out text of two kinds, prose and then a stretch the model finds easy: the estimate
    from a sample misses the whole figure by more than on a uniform text, and says so."""
    from charrnn.model.scoring import Pieces, score_pieces, standard_error

    corpus = corpus_from_text(generated_text(60_000) + "a" * 60_000)
    model = CharRNN(ModelConfig(len(corpus.vocab), hidden_size=16, layers=1, embedding_size=8))
    with torch.no_grad():  # a model that always expects "a": about 8 nats on prose, none on the rest
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[corpus.vocab.index["a"]] = 12.0
    cpu = torch.device("cpu")
    pieces = Pieces.spread(len(corpus.ids), 8_192)
    estimate, whole = score_pieces(model, corpus.ids, pieces, cpu), score(model, corpus.ids, cpu)
    assert whole.error is None and estimate.error > 0.1
    assert abs(estimate.nats - whole.nats) <= 2 * estimate.error
    uniform = corpus_from_text(generated_text(120_000)).ids
    assert score_pieces(model, uniform, pieces, cpu).error < estimate.error / 5
    assert standard_error(np.array([1.0])) is None and standard_error(np.array([2.0, 2.0, 2.0])) == 0


def test_the_kept_estimates_margin_survives_a_resume(tmp_path):
    corpus = corpus_from_text(generated_text(80_000))
    train_ids, val_ids = split(corpus.ids, 0.5)
    config = dict(batch_size=8, seq_len=32, eval_every=10, eval_chars=4096, ema=0.0, precision="fp32")

    def trainer(**changes) -> Trainer:
        seed_everything(0)
        model = CharRNN(ModelConfig(len(corpus.vocab), hidden_size=32, layers=1, embedding_size=8))
        c = TrainConfig(**{**config, **changes})
        return Trainer(model, train_ids, val_ids, c, tmp_path, run_record(model, corpus, c), torch.device("cpu"))

    first = trainer(max_steps=10).fit()
    assert first.kept.estimate_error > 0
    again = trainer(max_steps=20, lr=0.0)  # the weights stay as they are: no better validation after the resume
    again.resume_from(checkpoint.load(tmp_path))
    result = again.fit()
    assert result.kept.step == 10 and result.kept.estimate_error == first.kept.estimate_error


@pytest.mark.parametrize("last", [[3.05, 1.99, 3.02, 2.0, 3.03, 2.01], [3.2, 2.15, 3.2, 2.15, 3.2, 2.15]])
def test_a_last_estimate_worse_by_less_than_its_margin_hands_back_the_last_weights(tmp_path, last):
    """On a sample of the held-out text a slightly worse last estimate may be the sample's chance:
    within the margin of the difference (on the same pieces) the run hands back its last, more
    trained, weights and says why; a difference beyond it keeps the best."""
    from charrnn.records import Score

    trainer = make_trainer(tmp_path, generated_text(20_000), max_steps=30, eval_every=10)
    estimates = iter([[3.3, 2.3] * 3, [3.0, 2.0] * 3, last])  # steps 10, 20 (the best) and 30 (the last)

    def estimate(whole=False, model=None):
        pieces = next(estimates)
        return Score(sum(pieces) / len(pieces), 6144, 0.3, tuple(pieces))

    notes = []
    trainer.evaluate = estimate
    trainer.reporter.note = notes.append
    result = trainer.fit()
    tied = last[0] < 3.1
    assert result.kept.step == (30 if tied else 20)
    assert checkpoint.load(tmp_path, which="best").manifest["step"] == result.kept.step  # what sample and eval use
    assert result.kept.estimate == pytest.approx(sum(last) / 6 if tied else 2.5)
    assert result.best_val_loss == pytest.approx(2.5)
    assert [n for n in notes if "the last weights" in n] == (
        [
            "the estimate was lowest at step 20 (2.5000); the last weights' is +0.0167 from it on the same pieces, "
            "within that difference's margin (±0.0203), so the run hands back the last weights"
        ]
        if tied
        else []
    )


def test_a_program_gets_its_signal_handlers_back_after_an_interrupted_run(tmp_path):
    """`charrnn.train` in a notebook or a program: after Ctrl-C stopped a run, the next Ctrl-C is the
    program's again, not swallowed by a handler left behind."""
    import os
    import signal

    import charrnn
    from charrnn.training.report import Reporter

    class CtrlC(Reporter):  # Ctrl-C pressed while the second step is logged
        def log(self, record):
            if record["step"] == 2:
                os.kill(os.getpid(), signal.SIGINT)

    text = tmp_path / "text.txt"
    text.write_text(generated_text(5_000), encoding="utf-8")
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    settings = {"hidden_size": 32, "batch_size": 4, "seq_len": 32, "log_every": 1, "max_steps": 50}
    with pytest.raises(KeyboardInterrupt):
        charrnn.train(text, out=tmp_path / "run", reporter=CtrlC(), **settings)
    assert checkpoint.load(tmp_path / "run").manifest["step"] == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_sigterm_during_charrnn_train_reaches_the_programs_own_handler(tmp_path):
    """docker stop or systemd send SIGTERM: after the run saved, the program's own SIGTERM handling
    gets it (here a handler; by default the end of the process, 143), not a KeyboardInterrupt
    that a program catching Ctrl-C to go on would swallow."""
    import os
    import signal

    import charrnn
    from charrnn.training.report import Reporter

    class Term(Reporter):
        def log(self, record):
            if record["step"] == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    class Stopped(Exception):
        pass

    def handler(signum, frame):
        raise Stopped

    text = tmp_path / "text.txt"
    text.write_text(generated_text(5_000), encoding="utf-8")
    before = signal.signal(signal.SIGTERM, handler)
    try:
        settings = {"hidden_size": 32, "batch_size": 4, "seq_len": 32, "log_every": 1, "max_steps": 50}
        with pytest.raises(Stopped):
            charrnn.train(text, out=tmp_path / "run", reporter=Term(), **settings)
        assert checkpoint.load(tmp_path / "run").manifest["step"] == 2
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_run_that_overfits_hands_back_its_best_model(tmp_path):
    # a 1,500-character text, read a hundred times over: validation gets better, then worse
    corpus = corpus_from_text(generated_text(1_500) + generated_text(1_500, seed=1))
    seed_everything(0)
    model = CharRNN(ModelConfig(len(corpus.vocab), hidden_size=128, layers=1, embedding_size=16, dropout=0.0))
    config = TrainConfig(batch_size=4, seq_len=32, lr=2e-2, max_steps=400, eval_every=20, ema=0.0)
    record = run_record(model, corpus, config)
    trainer = Trainer(model, corpus.ids[:1500], corpus.ids[1500:], config, tmp_path, record, torch.device("cpu"))
    result = trainer.fit()
    assert result.kept_earlier and result.stopped_by == "max_steps"
    assert result.kept.estimate == result.best_val_loss < result.last_estimate - 0.05
    best = checkpoint.load(tmp_path, which="best")
    assert best.manifest["step"] == result.kept.step and best.path == result.kept.checkpoint
    assert (
        abs(score(best.model, trainer.val_ids, torch.device("cpu"), dtype=trainer.dtype).nats - result.val.nats) < 1e-9
    )
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["kept"]["step"] == result.kept.step and saved["steps"] == 400


def test_patience_is_automatic_with_a_time_budget_only():
    assert TrainConfig(max_time=60).auto_patience == 5
    assert TrainConfig(max_time=60, patience=0).auto_patience is None
    assert TrainConfig(max_steps=100).auto_patience is None
    assert TrainConfig(max_steps=100, patience=3).auto_patience == 3
    assert TrainConfig(max_time=60).eval_by_time and not TrainConfig(max_time=60, eval_every=50).eval_by_time


def test_under_torchrun_each_process_takes_its_own_gpu(monkeypatch):
    from charrnn.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    # cuda:0 on every rank would put both processes on one GPU
    assert [resolve_device(name) for name in ("cuda", "cuda:0", "auto")] == [torch.device("cuda", 1)] * 3
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_each_rank_and_each_resume_draws_its_own_dropout_seed():
    from charrnn.training.distributed import rank_seed

    seeds = {rank_seed(7, rank, step) for rank in range(4) for step in (0, 500)}
    assert len(seeds) == 8 and rank_seed(7, 1, 0) == rank_seed(7, 1, 0)


def test_auto_precision_on_cuda_is_fp16_with_loss_scaling(monkeypatch):
    # autocast runs cuDNN's LSTM in fp16 even when bf16 is asked for: whatever puts fp16 in the
    # graph gets a GradScaler, and `auto` names the fp16 it really runs
    from charrnn.device import needs_loss_scaling, resolve_precision

    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_precision("auto", gpu) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))  # no tensor cores
    assert resolve_precision("auto", gpu) == torch.float32
    assert needs_loss_scaling(torch.float16, gpu) and needs_loss_scaling(torch.bfloat16, gpu)
    assert not needs_loss_scaling(torch.bfloat16, torch.device("cpu"))
    assert not needs_loss_scaling(torch.float32, gpu)


def test_automatic_patience_waits_for_a_whole_pass_over_the_text(tmp_path):
    trainer = make_trainer(tmp_path, generated_text(20_000), max_steps=None, max_time=60.0, eval_every=None)
    trainer.evals_without_improvement = 5  # a quarter of the run's validations brought nothing
    trainer.batch_index = len(trainer.batches) - 1
    assert trainer.stop_reason() is None  # not yet one pass: a held-out text unlike the rest, not overfitting
    trainer.batch_index = len(trainer.batches)
    assert trainer.stop_reason() == "patience"
    trainer.batch_index, trainer.config.patience = 0, 5
    assert trainer.stop_reason() == "patience"  # --patience given: it applies from the start


def test_short_texts_are_scored_in_one_exact_stream():
    from charrnn.model.scoring import default_streams

    seed_everything(0)
    model = CharRNN(ModelConfig(40, hidden_size=32, layers=1, embedding_size=8))
    ids = corpus_from_text(generated_text(500)).ids
    cpu = torch.device("cpu")
    assert default_streams(len(ids)) == 1 and score(model, ids, cpu) == score(model, ids, cpu, streams=1)
    assert default_streams(111_539) == 32 and default_streams(20_000) == 7  # warm-ups under a tenth


def test_a_periodic_save_on_the_last_step_is_not_made_twice(tmp_path):
    """The end of a run validates and saves its last step; a periodic save due on that same step
    would otherwise save it once more, without its validation loss in the name."""
    trainer = make_trainer(tmp_path, generated_text(20_000), max_steps=20, save_every=10, eval_every=0, keep=10)
    trainer.fit()
    names = [p.name for p in layout.list_checkpoints(tmp_path)]
    steps = [int(name.split("-")[1]) for name in names]
    assert steps == [10, 20] and "val" in names[-1]


def test_a_short_budget_validates_less_often_rather_than_spending_its_time_validating(tmp_path, simulated_clock):
    """Each validation reads at least 20,000 characters: in a short budget that is more than the
    share meant for it, so the run validates fewer times, not at every step."""
    from charrnn.config import EVAL_SHARE

    simulated_clock(step=0.01, read_speed=100_000)  # a validation: 0.2 s, 5% of the budget
    text = generated_text(400_000)
    trainer = make_trainer(tmp_path, text, max_steps=None, max_time=4.0, eval_every=None)
    result = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    periodic = [r["time"] for r in records if "val_loss" in r][:-1]  # the last one is the end's
    gaps = [b - a for a, b in zip(periodic, periodic[1:])]
    assert result.steps > 50 and all(g >= 0.5 * trainer.validation_seconds() / EVAL_SHARE for g in gaps)


def test_timed_validations_are_spread_and_none_comes_just_before_the_one_that_ends_the_run():
    """About 20 validations over the training time, at most EVAL_SHARE of it when each is slow, and
    none in the last half interval: the validation at the end of training would follow it at
    almost the same step (two points 2 s apart at the end of a 3-minute curve)."""
    from charrnn.training.distributed import Dist
    from charrnn.training.validation import EvalClock

    def times(cost: float, pass_seconds: float | None = None) -> list[float]:
        clock = EvalClock(TrainConfig(max_time=120.0), 0.0, lambda: 100.0, lambda: cost, lambda: pass_seconds)
        return [t / 10 for t in range(1001) if clock.due(t, t / 10, True, Dist(), torch.device("cpu"))]

    quick = times(0.01)
    assert len(quick) == 19 and quick[0] == 5.0 and quick[-1] == 95.0  # every 5 s; 97.5 s on is the end's
    slow = times(1.0)  # 1 s each: every 12.5 s keeps validation to 8% of the time
    assert slow == [12.5, 25.0, 37.5, 50.0, 62.5, 75.0, 87.5]
    # a small text read once a second: every 2 passes, where 20 per run would be every 5 passes...
    small = times(0.01, pass_seconds=1.0)
    assert small[:3] == [2.0, 4.0, 6.0] and len(small) == 49
    assert times(0.01, pass_seconds=10.0) == quick  # ...and a large one as before
    assert times(0.5, pass_seconds=1.0)[:2] == [6.3, 12.6]  # never more than 8% of the time (every 6.25 s)

    # what a pass takes is known only once training has begun, and what a validation with its save
    # costs once one was made: neither may be fixed when the clock is made
    known = {"pass": None, "cost": 0.001}
    clock = EvalClock(TrainConfig(max_time=120.0), 0.0, lambda: 100.0, lambda: known["cost"], lambda: known["pass"])
    due = []
    for t in range(1, 1001):
        known["pass"] = 0.1  # measured from the first step on
        if clock.due(t, t / 100, True, Dist(), torch.device("cpu")):
            due.append(t / 100)
            known["cost"] = 0.08  # the first save was slow: at most 8% of the time is every second
    assert due[:3] == [0.2, 1.2, 2.2]  # two passes in, not a twentieth of the budget (5 s); then by the cost


def test_a_huge_budget_samples_no_more_than_the_held_out_text(tmp_path):
    """--max-time 10000000h sized the sample from the budget alone: 53 billion pieces, 397 GiB."""
    trainer = make_trainer(tmp_path, generated_text(5000), max_steps=2, max_time=3.6e10, eval_every=None)
    trainer.plan_validation()
    assert trainer.config.eval_chars <= max(len(trainer.val_ids), 20_000)  # a small text: scored whole
    small = make_trainer(tmp_path / "small", generated_text(1_501), max_steps=2, max_time=60.0, eval_every=None)
    small.plan_validation()
    assert small.pieces is None  # scored whole at every validation, not estimated from one piece


def test_a_small_texts_first_validation_comes_after_two_passes(tmp_path, simulated_clock):
    """A 2 KB text is read many times a second: its best model comes within a few passes, so a
    first validation a twentieth of the budget in (85 passes) would keep a model worse than chance.
    (A minute's budget stopped early by steps: its first twentieth, 3 s, is past the last step.)"""
    simulated_clock(step=0.02, read_speed=1_000_000)  # 120 steps: 2.4 s
    trainer = make_trainer(tmp_path, generated_text(2_000), max_steps=120, max_time=60.0, eval_every=None)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "val_loss" in r]
    per_pass = len(trainer.batches)
    assert steps[0] <= 3 * per_pass and len(steps) >= 3
    assert all(b - a > 1 for a, b in zip(steps, steps[1:]))  # none at the step after another


def _large_held_out_run(tmp_path, max_time: float):
    """A trainer with 50,000 characters to train on and a million held out, as `train` splits them."""
    corpus = corpus_from_text(generated_text(1_050_000))
    seed_everything(0)
    model = CharRNN(ModelConfig(len(corpus.vocab), hidden_size=32, layers=1, embedding_size=8, dropout=0.0))
    config = TrainConfig(batch_size=8, seq_len=32, max_time=max_time, precision="fp32")
    train_ids, val_ids = corpus.ids[:50_000], corpus.ids[50_000:]
    return Trainer(model, train_ids, val_ids, config, tmp_path, None, torch.device("cpu"))


def test_a_reserve_measured_on_a_busy_machine_is_measured_again_and_training_uses_the_budget(tmp_path, simulated_clock):
    """--max-time 90s trained 45-63 s on a busy machine and validated once: the scoring speed measured
    before the clock started was slow, the reserve for the last scoring came out huge, and training
    stopped at half the budget, where the last scoring took 2 s. Here the start's measure (its two
    passes) reads 10,000 characters a second and everything after it 400,000."""
    reads = iter([10_000, 10_000])
    simulated_clock(step=0.1, read_speed=lambda: next(reads, 400_000))
    trainer = _large_held_out_run(tmp_path, max_time=30.0)
    result = trainer.fit()
    assert result.stopped_by == "max_time" and 0.85 * 30.0 <= result.elapsed <= 1.05 * 30.0
    assert result.training_time >= 0.8 * 30.0 and result.reserve < 3.0 * 1.2 * 1.1  # the end: 2.6 s here
    periodic = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert len(periodic) >= 5  # validated as the run went, not only at its end
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["training_time"] == round(result.training_time, 3) and outcome(summary) is None


def test_the_summary_says_when_the_reserve_cut_training_short(tmp_path, simulated_clock):
    """A held-out text the budget cannot score in a small part of its time: training stops early to
    leave time for its last scoring, and the summary says so, with what the end took."""
    simulated_clock(step=0.1, read_speed=100_000)  # the million held-out characters: 10 s of 30
    trainer = _large_held_out_run(tmp_path, max_time=30.0)
    result = trainer.fit()
    assert result.stopped_by == "max_time" and result.reserve > 10.0
    assert result.training_time < 30.0 - 10.0
    summary = json.loads((tmp_path / "result.json").read_text())
    story = outcome(summary)
    assert story.startswith(f"training stopped at {result.training_time:.0f} s of the time budget")
    assert "--val-max-chars" in story  # the end did take about what was kept for it: the text is large
