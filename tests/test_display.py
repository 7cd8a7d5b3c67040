"""What people see: the dashboard, JSON-lines logs, plots, eval tables, the surprisal view."""

import io
import json
import math
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, generated_text, run_cli, run_here
from rich.console import Console

from charrnn import records
from charrnn.cli import dashboard, views
from charrnn.cli.charts import Curves, grid, read_curves, save_png
from charrnn.model.network import CharRNN, ModelConfig


def render_text(renderable) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None).print(renderable)
    return buffer.getvalue()


def test_dashboard_shows_progress_losses_speed_sparkline_and_sample():
    d = dashboard.TrainDisplay(run_dir="runs/demo")
    for step, loss in [(10, 3.0), (20, 2.5), (30, 2.1)]:
        d.log(
            {
                "step": step,
                "epoch": step / 100,
                "time": step / 10,
                "tokens": step * 1024,
                "train_loss": loss,
                "lr": 1e-3,
                "chars_per_sec": 12345.0,
                "progress": step / 100,
            }
        )
    d.evaluated({"step": 30, "val_loss": 2.2, "val_bpc": 3.174, "best_val_loss": 2.2, "time": 3.0, "tokens": 1})
    d.evaluated({"step": 40, "val_loss": 2.4, "val_bpc": 3.463, "best_val_loss": 2.2, "time": 4.0, "tokens": 1})
    d.sample = "ROMEO: what light"
    text = render_text(d.render())
    for expected in (
        "runs/demo",
        "30%",
        "eta",
        "step",
        "30",
        "12,345 chars/s",
        "2.1000",
        "2.2000",
        "2.4000",
        "3.463",
        "ROMEO: what light",
        "lr",
    ):
        assert expected in text, expected
    assert any(ch in text for ch in dashboard.SPARKS)
    assert "val curve  ▁█" in text  # validation going up shows beside the training curve
    assert d.smoothed < 2.5  # it follows a loss falling fast early on (3.0, 2.5, 2.1), not the first one


def test_the_smoothed_training_loss_follows_a_short_run():
    """A short run whose loss fell from 4.1 to 0.08 over 17 log lines: its smoothed figure near the
    recent losses, not held up by the first ones (it showed 1.03 against 0.08)."""
    d = dashboard.TrainDisplay(run_dir="runs/demo", quiet=True)
    losses = [4.1 * 0.78**i for i in range(17)]
    for i, loss in enumerate(losses):
        d.log(
            {
                "step": 10 * i,
                "epoch": 0.0,
                "time": i,
                "train_loss": loss,
                "lr": 1e-3,
                "chars_per_sec": 1.0,
                "progress": 0,
            }
        )
    assert d.smoothed < 2 * max(losses[-5:])


def test_dashboard_counts_up_the_last_scoring_and_ends_on_the_last_step():
    """The last scoring of a large held-out text takes a while: the dashboard says so as it goes,
    and its last frame shows the step the run ended on, not the last log step before it."""
    from charrnn.records import Result

    class Live:  # what rich's Live does on a terminal: show each frame
        def update(self, renderable):
            self.frame = render_text(renderable)

        def stop(self):
            pass

    d = dashboard.TrainDisplay(run_dir="runs/demo", quiet=False)
    log = {"step": 110, "epoch": 0.1, "time": 36.0, "train_loss": 2.1, "lr": 1e-3, "chars_per_sec": 9e4}
    d.log({**log, "tokens": 1, "progress": 0.6})
    d.live = live = Live()
    d.scoring({"step": 110, "done": 400_000, "characters": 951_646, "time": 45.0, "progress": 0.75})
    assert "the kept model (step 110) on all 951,647 held-out characters: 42%" in live.frame
    assert "75%" in live.frame and "0:45 elapsed, eta 0:15" in live.frame
    d.finish(Result(119, 0.11, 59.0, 121_856, 2.05, None, None, None, "max_time"))
    assert "step  119" in " ".join(live.frame.split("│")) and "100%" in live.frame
    assert "scoring" not in live.frame


def test_a_plain_log_says_once_that_the_last_scoring_runs(capsys):
    d = dashboard.TrainDisplay(run_dir="runs/demo", quiet=False)
    for done in (0, 0, 0, 5_000, 951_646):  # warm-up batches score nothing: several calls at 0
        d.scoring({"step": 110, "done": done, "characters": 951_646, "time": 45.0, "progress": 0.75})
    said = capsys.readouterr().err
    assert said.count("scoring the kept model (step 110) on all 951,647 held-out characters") == 1


@pytest.mark.parametrize("kept_step, said", [(65, True), (724, False)])
def test_a_small_text_is_called_small_only_when_its_best_model_came_early(kept_step, said):
    """Read 15 times, best at step 65 of 803: a shorter budget would do as well. Best at step 724 of
    803, two validations a hair worse after it: the run was still learning; no such advice."""
    story = records.outcome({"kept": {"step": kept_step, "epochs": 1.0}, "steps": 803, "epochs": 15.4})
    assert f"validation was best at step {kept_step}" in story
    assert ("small for this budget" in story) == said


def test_surprisal_reads_any_window_in_chunks(monkeypatch):
    from charrnn.model import scoring as evaluate

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(20, hidden_size=16, embedding_size=8))
    ids = np.random.default_rng(0).integers(0, 20, 500)
    whole = evaluate.surprisal(model, ids, 0, 500, torch.device("cpu"))
    monkeypatch.setattr(evaluate, "SURPRISAL_CHUNK", 7)  # the state carries from chunk to chunk
    assert np.allclose(evaluate.surprisal(model, ids, 0, 500, torch.device("cpu")), whole, atol=1e-5, equal_nan=True)
    assert np.allclose(evaluate.surprisal(model, ids, 100, 50, torch.device("cpu")), whole[100:150], atol=1e-5)
    first = evaluate.surprisal(model, ids, 0, 1, torch.device("cpu"))  # the first character: no context
    assert len(first) == 1 and np.isnan(first[0])


def test_a_resumed_runs_dashboard_curves_go_on_from_what_it_drew_before(tmp_path):
    from charrnn.training.metrics import MetricsLog

    log = MetricsLog(tmp_path)
    for step in range(10, 110, 10):
        log.append({"step": step, "train_loss": 3 - step / 100})
    log.append({"step": 50, "val_loss": 2.5})
    log.append({"step": 100, "val_loss": 2.0})
    log.append({"step": 110, "train_loss": 9.0})  # after the checkpoint the run resumes from
    d = dashboard.TrainDisplay(run_dir=tmp_path)
    d.live_mode = True
    d.start({"step": 100, "precision": "float32"})
    d.live.stop()
    assert len(d.history) == 10 and d.history[-1] < 2.5 and d.val_history == [2.5, 2.0]


def test_sparkline_scales_to_its_range():
    assert dashboard.sparkline([1, 2, 3, 4]) == "▁▃▆█"
    assert dashboard.sparkline([]) == ""
    # a long run is drawn whole: a fall from 4 to 1, then noise, is a falling curve
    run = [4 - 3 * i / 900 for i in range(900)] + [1.0, 1.05] * 50
    line = dashboard.sparkline(run)
    assert len(line) == 48 and line[0] == "█" and line[-1] == "▁"


def test_jsonl_log_format(text_file, tmp_path):
    run = tmp_path / "run"
    proc = run_here(
        "train",
        str(text_file),
        *TINY,
        "--max-steps",
        "20",
        "--eval-every",
        "10",
        "--log-format",
        "jsonl",
        "--sample-length",
        "40",
        "-o",
        str(run),
        check=True,
    )
    events = [json.loads(line) for line in proc.stderr.decode().splitlines()]  # every line is JSON
    kinds = [e["event"] for e in events]
    assert kinds[0] == "note" and "preset" in events[0]["message"]
    assert kinds.index("start") < kinds.index("finish") < kinds.index("sample")
    assert "eval" in kinds and "checkpoint" in kinds
    saved = [e["path"] for e in events if e["event"] == "checkpoint"]
    assert len(saved) == len(set(saved)) == 2  # at the evaluations of steps 10 and 20, once each
    assert all("train_loss" in e for e in events if e["event"] == "log")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if "train_loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in logs] == [1, 10, 20] and [r["step"] for r in evals] == [10, 20]
    for r in logs:
        assert {"step", "time", "tokens", "train_loss", "lr", "chars_per_sec"} <= r.keys()
        assert r["tokens"] == r["step"] * 8 * 32
    assert all(r["val_standard_error"] is None for r in evals)  # a held-out text this small is scored whole


def test_a_validation_from_a_sample_of_the_held_out_text_states_its_margin(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(generated_text(40_000), encoding="utf-8")
    run = tmp_path / "run"
    args = ["--max-steps", "10", "--eval-every", "10", "--val-fraction", "0.5", "--eval-chars", "4096"]
    proc = run_here("train", str(corpus), *TINY, *args, "--log-format", "plain", "-o", str(run), check=True)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "val_loss" in r]
    assert evals and all(0 < r["val_standard_error"] < 0.5 for r in evals)  # 4 pieces of 20,000 characters
    line = next(
        line for line in proc.stderr.decode().splitlines() if line.startswith("step") and " validation " in line
    )
    assert f"validation {evals[0]['val_loss']:.4f} ±{2 * evals[0]['val_standard_error']:.3f} " in line
    last_checkpoint = run / "checkpoints" / json.loads((run / "result.json").read_text())["last_checkpoint"]
    assert len(str(last_checkpoint)) > 80  # and yet whole on its line, to copy, in a pipe
    assert re.search(rf"^  resume from +{re.escape(str(last_checkpoint))} *$", proc.stderr.decode(), re.M)
    summary = " ".join(proc.stderr.decode().split())
    last = evals[-1]
    assert "/ 20,001 validation characters" in summary  # the first line counts the same text
    assert (
        f"on all 20,001 held-out characters (estimated from a sample during the run: {last['val_loss']:.4f} "
        f"±{2 * last['val_standard_error']:.3f})" in summary
    )
    info = " ".join(run_here("info", str(run), check=True).stdout.decode().split())
    # the kept model's figure on the whole held-out text first, with the estimate the run saw
    whole = json.loads((run / "result.json").read_text())["val_loss"]
    assert (
        f"validation loss {whole:.4f} ({whole / math.log(2):.3f} bpc) on all 20,001 held-out characters "
        f"(estimated from a sample during the run: {last['val_loss']:.4f} ±{2 * last['val_standard_error']:.3f})"
        in info
    )
    shown = json.loads(run_here("info", str(run), "--json", check=True).stdout)
    assert shown["val_standard_error"] == last["val_standard_error"]  # kept in the checkpoint
    best = min(evals, key=lambda r: r["val_loss"])
    assert shown["best_val_loss"] == best["val_loss"] and shown["best_val_standard_error"] == best["val_standard_error"]
    assert "best validation" not in info  # the kept model's own estimate, shown once above


def test_plot_in_terminal_and_to_png(trained_run, tmp_path):
    proc = run_cli("plot", str(trained_run), env={"FORCE_COLOR": "1"}, check=True)
    out = proc.stdout.decode()
    assert "step" in out and "validation" in out and "●" in out
    assert "\x1b" not in out and proc.stderr == b""  # a pipe gets no colour, even with FORCE_COLOR
    curve = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    best = min((r for r in curve if "val_loss" in r), key=lambda r: r["val_loss"])
    assert f"best validation {best['val_loss']:.4f} at step {best['step']:,}, last " in out  # the legend
    png = tmp_path / "curves.png"
    run_cli("plot", str(trained_run), "--output", str(png), check=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(Exception, match="pip install"):
        save_png([Curves("x", [(1, 2.0)])], tmp_path / "x.png")


def test_grid_puts_lower_losses_lower():
    cells, axes = grid([Curves("a", [(0, 3.0), (10, 1.0)], [(10, 1.5)])], width=11, height=5)
    assert cells[0][0][0] == "·" and cells[4][10][0] == "·" and axes["y_min"] == 1.0


def test_several_runs_are_told_apart_without_colour(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "other")
    out = run_cli("plot", str(trained_run), str(tmp_path / "other"), check=True).stdout.decode()
    assert "\x1b" not in out and "●" in out and "■" in out  # each run its own marks, in a pipe too
    legend = [line.split()[:4] for line in out.splitlines()[-2:]]
    assert legend == [["·", "train", "●", "validation"], ["+", "train", "■", "validation"]]


def test_plot_and_resume_skip_metrics_lines_not_in_charrnns_form(trained_run, tmp_path):
    import shutil as sh

    run = tmp_path / "run"
    sh.copytree(trained_run, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": "x", "train_loss": "nan"}\n{"step": 10, "train_loss": null}\n[1]\n')
    assert run_here("plot", str(run)).returncode == 0
    proc = run_here("train", "--resume", str(run), "--max-steps", "62", "--sample-length", "0")
    assert proc.returncode == 0, proc.stderr.decode()


def test_plot_needs_metrics(tmp_path):
    with pytest.raises(Exception, match="metrics.jsonl"):
        read_curves(tmp_path)


def test_eval_several_checkpoints_and_files(trained_run, text_file, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("BEN: the dog sat.\n" * 20)
    proc = run_here("eval", str(trained_run), str(trained_run), str(text_file), str(other), "--json", check=True)
    rows = json.loads(proc.stdout)["results"]
    assert len(rows) == 4 and {r["file"] for r in rows} == {str(text_file), str(other)}
    table = run_here("eval", str(trained_run), str(text_file), str(other), check=True).stderr.decode()
    assert "other.txt" in table and "bits/char" in table and "perplexity" in table


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text = ""
        self.stack = []

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "br"):  # void elements have no end tag
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag  # well nested

    def handle_data(self, data):
        self.text += data


def test_surprisal_view_and_html(trained_run, text_file, tmp_path):
    page = tmp_path / "view.html"
    proc = run_here(
        "surprise",
        str(trained_run),
        str(text_file),
        "--start",
        "100",
        "--length",
        "300",
        "--html",
        str(page),
        check=True,
    )
    window = text_file.read_text()[100:400]
    out = proc.stdout.decode()  # the view is the result: stdout, so | less and | grep work
    assert window[:40] in out and "surprise" in out and "\x1b" not in out
    assert f"wrote {page}" in proc.stderr.decode()
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    parser = _Collector()
    parser.feed(html)
    assert parser.stack == []
    assert window.replace("\n", "⏎\n") in parser.text


def test_narrow_help_keeps_every_flag_name_whole():
    proc = run_cli("train", "--help", env={"COLUMNS": "60"}, check=True)
    help_text = proc.stdout.decode()
    for flag in ("--save-every-minutes", "--keep-newlines", "--no-keep-newlines", "--embedding-size"):
        assert flag in help_text
    assert "…" not in help_text and max(len(line) for line in help_text.splitlines()) <= 60


def test_info_of_a_model_kept_by_the_margin_rule_says_so(capsys):
    """The run kept its last weights (step 240), whose estimate is a hair above the lowest (step 200):
    info shows the kept model's own figures first and names the lower estimate as another step's."""
    name = "step-00000240-val1.5012"
    summary = {
        "checkpoint": f"runs/demo/checkpoints/{name}",
        "model": {"layers": 1, "hidden_size": 32, "cell": "lstm", "embedding_size": 8, "dropout": 0.1},
        "parameters": 1234,
        "vocab_size": 3,
        "vocab": "abc",
        "vocab_kind": "chars",
        "corpus": {},
        "step": 240,
        "epoch": 1.5,
        "training_seconds": 70.2,
        "train": {"ema": 0.999},
        "train_loss": 1.4,
        "val_loss": 1.5012,
        "val_standard_error": 0.01,
        "best_val_loss": 1.4990,
        "best_val_standard_error": 0.01,
        "result": {
            "steps": 240,
            "val_loss": 1.5100,
            "val_characters": 99_999,
            "held_out_characters": 99_999,
            "kept": {
                "step": 240,
                "epochs": 1.5,
                "checkpoint": name,
                "val_estimate": 1.5012,
                "val_estimate_standard_error": 0.01,
            },
        },
        "checkpoints": [name],
        "latest": name,
        "best": name,
        "tool_version": "0",
        "format_version": 1,
    }
    views.info_table(summary)
    shown = " ".join(capsys.readouterr().out.split())
    assert "validation loss 1.5100 (2.178 bpc) on all 100,000 held-out characters" in shown
    assert "lowest estimate 1.4990 ±0.020 (2.163 bpc), of an earlier step; the last weights were kept" in shown
    assert "best validation" not in shown and "saved 70 s into the run" in shown


def test_a_long_eval_shows_a_progress_bar_on_a_terminal_and_nothing_in_a_pipe(
    trained_run, tmp_path, monkeypatch, simulated_clock
):
    """`eval` that scored for minutes on a busy machine showed nothing: a scoring that takes more than a
    second now shows a bar on a terminal; into a pipe or a file stderr stays quiet, and the figures
    are the same either way."""
    from charrnn.cli import display

    monkeypatch.chdir(tmp_path)
    Path("long.txt").write_text(generated_text(200_000), encoding="utf-8")
    simulated_clock(step=0.1, read_speed=20_000, per_batch=True)  # about 10 s of scoring
    piped = run_here("eval", str(trained_run), "long.txt", "--json", check=True)
    assert piped.stderr == b""
    terminal = io.StringIO()
    monkeypatch.setattr(display, "console", Console(file=terminal, force_terminal=True, width=120))
    monkeypatch.setattr(display, "animated", lambda: True)
    shown = run_here("eval", str(trained_run), "long.txt", "--json", check=True)
    assert shown.stdout == piped.stdout
    assert re.search(r"long\.txt .*[\d,]+/200,000 characters", terminal.getvalue())
    short = display.ScoringProgress("short.txt")
    short(1_000, 2_000)  # within the first second: no bar
    assert short.progress is None and "short.txt" not in terminal.getvalue()
