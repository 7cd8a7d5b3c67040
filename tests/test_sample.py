"""Sampling: decoding options, priming, stopping, several samples, interactive use, pipes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import run_cli, run_here

import charrnn
from charrnn.errors import CharRNNError
from charrnn.generation.sampler import Decoding, Request, Sampler
from charrnn.storage import checkpoints as ckpt
from charrnn.storage import layout


@pytest.fixture(scope="module")
def sampler(trained_run) -> Sampler:
    loaded = ckpt.load(trained_run)
    return Sampler(loaded.model, loaded.vocab)


def draw(sampler, decoding, n=200, seed=None, prime="ANNA:") -> str:
    sampler.reset()
    return "".join(c[0] for c in sampler.generate(Request(prime=prime, length=n, seed=seed), decoding))


def test_greedy_is_deterministic_and_equals_top_k_1(sampler):
    greedy = draw(sampler, Decoding(temperature=0))
    assert greedy == draw(sampler, Decoding(temperature=0))
    assert greedy == draw(sampler, Decoding(temperature=1.3, top_k=1), seed=7)


def test_seed_reproduces_and_differs_between_seeds(sampler):
    a = draw(sampler, Decoding(1.0), seed=1)
    assert a == draw(sampler, Decoding(1.0), seed=1)
    assert a != draw(sampler, Decoding(1.0), seed=2)


def test_top_k_0_is_no_limit_as_in_the_server():
    assert Decoding(1.0, top_k=0) == Decoding(1.0)


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    picks = {Decoding(1.0, top_k=2).choose(logits, g).item() for _ in range(300)}
    assert picks == {0, 1}
    # softmax of these logits: 0.64, 0.24, 0.09, ...: p=0.7 keeps the first two
    picks = {Decoding(1.0, top_p=0.7).choose(logits, g).item() for _ in range(300)}
    assert picks == {0, 1}
    picks = {Decoding(1.0, top_p=0.5).choose(logits, g).item() for _ in range(100)}
    assert picks == {0}


def test_temperature_sharpens_or_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    cold = [Decoding(0.1).choose(logits, g).item() for _ in range(200)]
    hot = [Decoding(5.0).choose(logits, g).item() for _ in range(200)]
    assert cold.count(0) > 195 and len(set(hot)) == 3


def test_tiny_temperatures_choose_the_most_likely_character():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0 - 1e-6]])
    for t in (1e-40, 5e-324, 1e-300):
        assert Decoding(t).choose(logits, torch.Generator().manual_seed(0)).item() == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": float("nan")},
        {"top_k": -1},
    ],
)
def test_invalid_decoding_values(kwargs):
    with pytest.raises(CharRNNError) as e:
        Decoding(**kwargs)
    assert e.value.exit_code == 2


def test_stop_string_ends_the_sample(trained_run):
    proc = run_here(
        "sample", str(trained_run), "--prime", "ANNA:", "--stop", ".", "-n", "500", "--seed", "1", check=True
    )
    text = proc.stdout.decode()
    assert text.endswith(".") and text.count(".") == 1 and len(text) < 500


def test_prime_from_stdin_and_file(trained_run, tmp_path):
    a = run_here(
        "sample", str(trained_run), "--prime", "-", "-n", "40", "--seed", "2", input="BEN: the cat", check=True
    )
    assert a.stdout.decode().startswith("BEN: the cat")
    prime = tmp_path / "prime.txt"
    prime.write_text("BEN: the cat")
    b = run_here("sample", str(trained_run), "--prime-file", str(prime), "-n", "40", "--seed", "2", check=True)
    assert a.stdout == b.stdout


def test_unknown_prime_characters(trained_run):
    proc = run_here("sample", str(trained_run), "--prime", "ANNA: ☃ Zq", "-n", "5")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "'☃'" in err and "--unknown skip" in err and "Traceback" not in err
    ok = run_here("sample", str(trained_run), "--prime", "ANNA: ☃", "-n", "5", "--unknown", "skip", check=True)
    assert ok.stdout.decode().startswith("ANNA: ") and "☃" not in ok.stdout.decode()


def test_count_with_separator_and_jsonl(trained_run):
    proc = run_here(
        "sample", str(trained_run), "--count", "3", "-n", "50", "--seed", "4", "--separator", "\n---\n", check=True
    )
    parts = proc.stdout.decode().split("\n---\n")
    assert len(parts) == 3 and all(len(p) == 50 for p in parts)
    proc = run_here(
        "sample", str(trained_run), "--count", "3", "-n", "50", "--seed", "4", "--jsonl", "--prime", "BEN:", check=True
    )
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(records) == 3 and {r["index"] for r in records} == {0, 1, 2}
    assert all(r["prime"] == "BEN:" and r["text"] == "BEN:" + r["continuation"] and r["seed"] == 4 for r in records)
    assert len({r["continuation"] for r in records}) > 1  # one batch, different samples
    assert all(r["finish_reason"] == "length" for r in records)
    proc = run_here("sample", str(trained_run), "--count", "8", "-n", "40", "--seed", "4", "--jsonl", "--stop", " ")
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    reasons = {r["finish_reason"]: r["continuation"] for r in records}  # which ended at the stop string
    assert reasons["stop"].endswith(" ") and len(reasons["stop"]) < 40 and " " not in reasons.get("length", "")


def test_interactive_loop_keeps_state_until_reset(trained_run):
    script = "ANNA: the\nBEN: a\n/reset\nANNA: the\n"
    proc = run_here(
        "sample", str(trained_run), "--interactive", "-n", "30", "--seed", "1", "--stop", "\n", input=script, check=True
    )
    replies = proc.stdout.decode().splitlines()
    assert len(replies) == 3
    assert replies[2] == replies[0]  # after /reset the same prompt gives the same reply again
    assert proc.stderr == b""  # no prompts when stdin is not a terminal


@pytest.mark.parametrize("count", ["1", "2"])
def test_closed_pipe_is_quiet(trained_run, count):
    """`| head` ends the work at once (a hundred million characters would take many minutes), with
    several samples too: the first is written as it is made."""
    env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run(
        f"{sys.executable} -m charrnn sample {trained_run} --length 100000000 --count {count} | head -c 10",
        shell=True,
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert len(proc.stdout) == 10
    assert proc.stderr == b""


@pytest.mark.parametrize("command", ["info {run}", "plot {run}", "surprise {run} {run}/../corpus.txt"])
def test_the_commands_that_print_tables_end_quietly_with_0_when_the_reader_goes(trained_run, command):
    env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
    line = f"{sys.executable} -m charrnn {command.format(run=trained_run)} | true; echo ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", line], capture_output=True, env=env, timeout=120)
    assert (proc.stdout, proc.stderr) == (b"0\n", b"")


def test_full_disk_is_a_clear_error(trained_run):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "charrnn", "sample", str(trained_run), "-n", "100000"],
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert proc.returncode == 1
    assert (
        b"No space left on device" in proc.stderr
        and b"Traceback" not in proc.stderr
        and b"Exception ignored" not in proc.stderr
    )


def test_output_is_byte_exact_even_with_force_color(trained_run):
    # ':smile:' would become an emoji if the text went through Rich; it must not.
    proc = run_cli(
        "sample", str(trained_run), "--prime", "ANNA: :smile: the cat", "-n", "0", env={"FORCE_COLOR": "1"}, check=True
    )
    assert proc.stdout == b"ANNA: :smile: the cat"


def test_reading_ids_back_in_blocks_draws_the_same_text(trained_run):
    # On a GPU the ids come back every few characters (no wait per character); the text and the
    # stop strings must be those of reading back every character.
    loaded = ckpt.load(trained_run)
    request = Request(prime="BEN:", length=203, count=3, stop=["."], seed=4)
    texts = {}
    for readback in (1, 7):
        sampler = Sampler(loaded.model, loaded.vocab, readback=readback)
        rows = list(zip(*sampler.generate(request, Decoding(1.0, top_p=0.95))))
        texts[readback] = ["".join(r) for r in rows]
    assert texts[1] == texts[7]
    assert all(t.endswith(".") for t in texts[1]) and len(set(texts[1])) == 3


def test_drawing_equals_torch_multinomial(trained_run):
    # The sampler draws its own exponentials (multinomial's check waits for a GPU on every
    # character): a seed must give the characters torch.multinomial gave, in every decoding.
    loaded = ckpt.load(trained_run)
    for decoding in (Decoding(1.0), Decoding(0.7, top_k=5), Decoding(1.2, top_p=0.8)):
        sampler = Sampler(loaded.model, loaded.vocab)
        sampler.feed("BEN:", count=3)
        g, h = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        for _ in range(50):
            expected = torch.multinomial(decoding.probs(sampler.logits), 1, generator=h).squeeze(-1)
            ids = decoding.choose(sampler.logits, g)
            assert torch.equal(ids, expected)
            sampler.logits, sampler.state = sampler.fast.step(ids, sampler.state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("decoding", [Decoding(0.0), Decoding(1.0), Decoding(0.8, top_k=5, top_p=0.9)])
def test_cuda_graphs_draw_what_the_steps_draw_one_by_one(trained_run, decoding):  # pragma: no cover - GPU only
    # On CUDA a block of characters is one recorded graph; drawn op by op, the same seed must give
    # the same text, and a block that is not whole (the last, 203 = 6 x 32 + 11) is drawn op by op.
    # A second request continues from where the first left the state; another decoding in between
    # has a graph of its own.
    loaded = ckpt.load(trained_run, "cuda")
    first, then = Request(prime="BEN:", length=203, count=3, seed=4), Request(length=150, count=3, seed=5)
    texts = []
    for graphs in (True, False):
        sampler = Sampler(loaded.model, loaded.vocab, "cuda")
        sampler.use_graphs = graphs
        rows = ["".join(r) for r in zip(*sampler.generate(first, decoding))]
        other = Sampler(loaded.model, loaded.vocab, "cuda", fast=sampler.fast)
        other.use_graphs = graphs
        list(other.generate(first, Decoding(0.5)))
        rows += ["".join(r) for r in zip(*sampler.generate(then, decoding))]
        texts.append(rows)
        assert sampler.graph_error is None and len(sampler.fast.graphs) == (2 if graphs else 0)
    assert texts[0] == texts[1] and [len(t) for t in texts[0]] == [203] * 3 + [150] * 3


@pytest.mark.parametrize("temperature", ["0", "1"])
def test_nan_weights_are_a_clear_error(trained_run, tmp_path, temperature):
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "damaged"
    shutil.copytree(layout.resolve(trained_run), folder)
    weights = load_file(folder / "model.safetensors")
    weights["head.bias"][3] = float("nan")  # what an overflowed fp16 run can leave behind
    save_file(weights, folder / "model.safetensors")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = run_here("sample", str(folder), "-n", "20", "-t", temperature, "--seed", "1")
    assert proc.returncode == 1, proc.stderr.decode()
    assert b"NaN" in proc.stderr and b"Traceback" not in proc.stderr
    # every way in says so, rather than scoring NaN (invalid JSON) or serving noise
    proc = run_here("eval", str(folder), str(trained_run / ".." / "corpus.txt"), "--json")
    assert proc.returncode == 1 and b"NaN" in proc.stderr and proc.stdout == b""
    with pytest.raises(CharRNNError, match="not numbers"):
        charrnn.load(folder)
    assert b"60 steps" in run_here("info", str(folder), check=True).stdout  # still shows what happened


def near_the_largest_float(weights: dict) -> dict:
    """Finite weights whose products overflow: the head's sums of them are infinite or NaN."""
    return {k: w / w.abs().max() * 3e38 if k == "head.weight" else w for k, w in weights.items()}


@pytest.mark.parametrize(
    "damage, said",
    [
        (near_the_largest_float, "output is not a number"),
        (lambda ws: {k: w.to(torch.int32) for k, w in ws.items()}, "not floating point: "),  # cast: a model of zeros
    ],
)
def test_weights_that_overflow_or_are_integers_are_clear_errors(trained_run, tmp_path, damage, said):
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "damaged"
    shutil.copytree(layout.resolve(trained_run), folder)
    save_file(damage(load_file(folder / "model.safetensors")), folder / "model.safetensors")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for args in (
        ["sample", str(folder), "-n", "20"],
        ["eval", str(folder), str(trained_run / ".." / "corpus.txt"), "--json"],
    ):
        proc = run_here(*args)
        assert proc.returncode == 1 and said in proc.stderr.decode() and proc.stdout == b""
    with pytest.raises(CharRNNError, match=said):
        charrnn.load(folder)


@pytest.mark.parametrize("device, code", [("cpu", 0), ("auto", 0), ("tpu", 2)])
def test_sample_device_flag(trained_run, device, code):
    if device == "auto" and torch.cuda.is_available():
        pytest.skip("auto picks the GPU here; this checks the CPU-only fallback")
    proc = run_here("sample", str(trained_run), "-n", "20", "--seed", "1", "--device", device)
    assert proc.returncode == code, proc.stderr.decode()
    assert (len(proc.stdout.decode()) == 20) == (code == 0)


def test_a_long_prime_is_read_in_pieces_with_the_same_result(trained_run, monkeypatch):
    """A book as the prime is read a piece at a time, carrying the state (in one call it took 3 GB
    for 200,000 characters): the sample is the one a single call gives."""
    import charrnn.generation.sampler

    model = charrnn.load(trained_run)
    prime = "ANNA: the cat sat on a mat.\nBEN: the dog ran to see her.\n" * 3
    whole = model.sample(prime, length=80, seed=4)
    monkeypatch.setattr(charrnn.generation.sampler, "PRIME_CHUNK", 7)
    assert model.sample(prime, length=80, seed=4) == whole


def test_a_stop_string_that_ends_at_the_length_is_a_stop(trained_run):
    """As the server says it: a --stop string that completes on the last character ended the sample."""
    args = ["sample", str(trained_run), "--prime", "ANNA:", "--seed", "7", "--stop", "e", "--jsonl", "-n"]
    stopped = json.loads(run_here(*args, "300", check=True).stdout)["continuation"]
    record = json.loads(run_here(*args, str(len(stopped)), check=True).stdout)
    assert record["continuation"] == stopped and stopped.endswith("e")
    assert record["finish_reason"] == "stop"
