"""The GPU check: one command, about 7 minutes on an H200 (5 without the grid: `--grid none`),
results as JSON after every phase. benchmarks/README.md ("gpu_check.py: the GPU path") has an H200's.

    PYTHONPATH=. python benchmarks/gpu_check.py /path/to/tinyshakespeare.txt --out gpu_check.json
    PYTHONPATH=. python benchmarks/gpu_check.py corpus.txt --device cpu --quick   # smoke test, about 1.5 minutes

Phases (a phase that fails records its error and the next one runs):
- environment: PyTorch, CUDA, cuDNN, the GPU, native bf16, what `--precision auto` resolves to;
- peak: measured matrix-multiply FLOP/s in bf16, fp16 and fp32 (TF32 where enabled);
- dtypes: what autocast really runs the LSTM in (its output and state, seen by a forward hook), for
  bf16 and fp16, and the dtype of the state the trainer carries between batches;
- training: chars/s of the CLI's training step (`Trainer.train_step`, `--precision auto`) against a
  plain fp32 nn.LSTM loop, for 2x512 at batch 64 and 512 and 3x1024 at batch 256 (sequence 128),
  with model-FLOP utilisation against the measured bf16 peak;
- sampling: chars/s of `Sampler` at batch 1 and 64, with CUDA graphs and op by op;
- quality: the real CLI, `charrnn train CORPUS --preset auto --max-time 2m`, then its validation loss;
- cli: `charrnn sample` and `charrnn eval` on the GPU from the quality run, and a one-process
  `torchrun` (NCCL) run;
- grid: candidate GPU settings (`--grid small` for tiny-shakespeare, `--grid large` with
  `--grid-corpus` for a text of several MB), each the real CLI at the quality budget, all at once
  on the one GPU (sharing it, so each trains slower than alone: a comparison of settings, not of
  speed).
Needs only PyTorch and this checkout: no network, no ../shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.corpus import corpus_from_text
from charrnn.device import resolve_device, resolve_precision
from charrnn.generation.sampler import Decoding, Request, Sampler
from charrnn.model.network import CharRNN, state_tensors
from charrnn.training import metrics
from charrnn.training.trainer import Trainer

VOCAB = 65
FULL = {
    "training": [(2, 512, 64, 128), (2, 512, 512, 128), (3, 1024, 256, 128)],  # layers, hidden, batch, seq
    "precisions": (2, 512, 512, 128),  # also timed in fp32 and bf16
    "seconds": 6.0,  # per training measurement
    "matmul": 8192,
    "sample_chars": 3000,
    "sample_model": (2, 512),  # layers, hidden
    "quality_time": "2m",
    "cli_steps": 100,
}
# Settings a GPU might get at the quality budget, flags on top of a preset: for tiny-shakespeare
# (`--grid small`) and for a text of several MB (`--grid large --grid-corpus vim-docs.txt`).
GRIDS = {}
GRIDS["small"] = {
    "medium": "--preset medium".split(),
    "large_d05": "--preset large --dropout 0.5 --weight-decay 0.1 --ema 0.999".split(),
    "3x512_d05": "--preset large --layers 3 --dropout 0.5 --weight-decay 0.1 --ema 0.999".split(),
    "2x1024_d05": "--preset large --hidden-size 1024 --dropout 0.5 --weight-decay 0.1 --ema 0.999 --lr 1e-3".split(),
}
GRIDS["large"] = {
    "medium": "--preset medium".split(),
    "large": "--preset large".split(),
    "large_batch256": "--preset large --batch-size 256 --lr 4e-3".split(),
}
QUICK = {
    "training": [(1, 64, 8, 32)],
    "precisions": (1, 64, 8, 32),
    "seconds": 0.5,
    "matmul": 256,
    "sample_chars": 100,
    "sample_model": (1, 32),
    "quality_time": "3s",
    "cli_steps": 5,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, seconds: float) -> tuple[int, float]:
    """Call fn (after one warm-up call) until `seconds` have passed; (calls, elapsed seconds)."""
    fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
        if device.type == "cuda" and calls % 4 == 0:
            sync(device)  # do not queue minutes of work ahead of the clock
    sync(device)
    return calls, time.perf_counter() - start


def model_flops_per_char(layers: int, hidden: int, embedding: int) -> float:
    """6 x the weights a character meets (2 FLOPs per multiply-add, x3 for forward + backward)."""
    weights = 4 * hidden * (embedding + hidden) + (layers - 1) * 4 * hidden * 2 * hidden + hidden * VOCAB
    return 6.0 * weights


def environment(device: torch.device, settings: dict) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "precision_auto": str(resolve_precision("auto", device)).split(".")[-1],
    }
    if device.type == "cuda":
        info |= {
            "gpu": torch.cuda.get_device_name(device),
            "capability": list(torch.cuda.get_device_capability(device)),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    return info


def peak(device: torch.device, settings: dict) -> dict:
    n, rates = settings["matmul"], {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        if device.type == "cpu" and dtype == torch.float16:
            continue
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        calls, elapsed = timed(device, lambda a=a, b=b: torch.mm(a, b), settings["seconds"] / 2)
        rates[f"{name}_tflops"] = round(calls * 2 * n**3 / elapsed / 1e12, 3)
    return rates


def dtypes(device: torch.device, settings: dict) -> dict:
    """What autocast really runs the recurrent layers in (cuDNN's wrapper has cast to fp16)."""
    model = CharRNN(ModelConfig(VOCAB, "lstm", 2, 64, 16, 0.0)).to(device)
    seen = {}
    model.rnn.register_forward_hook(
        lambda module, args, out: seen.update(rnn_output=out[0].dtype, rnn_state=out[1][0].dtype)
    )
    x = torch.randint(0, VOCAB, (4, 16), device=device)
    result = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            with torch.autocast(device.type, dtype=dtype):
                logits, _ = model(x)
            result[f"autocast_{name}"] = {k: str(v).split(".")[-1] for k, v in seen.items()}
            result[f"autocast_{name}"]["head_output"] = str(logits.dtype).split(".")[-1]
        except RuntimeError as e:
            result[f"autocast_{name}"] = {"error": str(e).splitlines()[0]}
    trainer = make_trainer(device, 1, 64, 4, 16, "auto", Path(tempfile.mkdtemp()))
    trainer.train_step()
    result["carried_state"] = str(state_tensors(trainer.hidden)[0].dtype).split(".")[-1]
    result["trainer_precision"] = str(trainer.dtype).split(".")[-1]
    result["grad_scaler"] = trainer.scaler.is_enabled()
    result["optimizer_fused"] = bool(trainer.optimizer.param_groups[0].get("fused"))
    return result


def make_trainer(device, layers, hidden, batch, seq, precision, run_dir) -> Trainer:
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, VOCAB, size=batch * seq * 50 + 1).astype(np.uint8)
    config = TrainConfig(batch_size=batch, seq_len=seq, max_steps=10**9, precision=precision, eval_every=0, ema=0.0)
    model = CharRNN(ModelConfig(VOCAB, "lstm", layers, hidden, min(hidden, 256), 0.0))
    return Trainer(model, ids, ids[:0], config, run_dir, None, device)


def plain_loop(device, layers, hidden, batch, seq):
    """The loop a tutorial writes: embedding -> nn.LSTM -> linear, fp32, AdamW."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(VOCAB, min(hidden, 256)).to(device)
    rnn = torch.nn.LSTM(min(hidden, 256), hidden, layers, batch_first=True).to(device)
    head = torch.nn.Linear(hidden, VOCAB).to(device)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    data = torch.randint(0, VOCAB, (batch, seq + 1), device=device)
    state = None

    def step():
        nonlocal state
        out, state = rnn(emb(data[:, :-1]), state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(head(out).flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def training(device: torch.device, settings: dict, peak_tflops: float | None) -> dict:
    rows = {}
    for layers, hidden, batch, seq in settings["training"]:
        key = f"{layers}x{hidden}_batch{batch}_seq{seq}"
        chars = batch * seq
        flops = model_flops_per_char(layers, hidden, min(hidden, 256))
        calls, elapsed = timed(device, plain_loop(device, layers, hidden, batch, seq), settings["seconds"])
        plain = calls * chars / elapsed
        trainer = make_trainer(device, layers, hidden, batch, seq, "auto", Path(tempfile.mkdtemp()))
        calls, elapsed = timed(device, trainer.train_step, settings["seconds"])
        ours = calls * chars / elapsed
        rows[key] = {
            "plain_fp32_chars_per_s": round(plain),
            "charrnn_chars_per_s": round(ours),
            "charrnn_precision": str(trainer.dtype).split(".")[-1],
            "speedup": round(ours / plain, 3),
            "model_tflops": round(ours * flops / 1e12, 3),
            "mfu_vs_bf16_peak": round(ours * flops / (peak_tflops * 1e12), 4) if peak_tflops else None,
        }
    layers, hidden, batch, seq = settings["precisions"]
    for precision in ("fp32", "bf16"):
        trainer = make_trainer(device, layers, hidden, batch, seq, precision, Path(tempfile.mkdtemp()))
        calls, elapsed = timed(device, trainer.train_step, settings["seconds"])
        rows[f"{layers}x{hidden}_batch{batch}_seq{seq}_{precision}"] = {
            "charrnn_chars_per_s": round(calls * batch * seq / elapsed),
            "final_train_loss": round(trainer.train_step(), 4),
        }
    return rows


def sampling(device: torch.device, settings: dict) -> dict:
    """Chars/s of `Sampler` at batch 1 and 64, with its blocks of characters replayed as CUDA graphs
    (as `charrnn sample` draws) and drawn op by op; greedy text must be the same either way."""
    corpus = corpus_from_text("".join(chr(32 + i) for i in range(VOCAB)))
    layers, hidden = settings["sample_model"]
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(VOCAB, "lstm", layers, hidden, 64, 0.0)).to(device)
    result: dict = {"model": f"{layers}x{hidden}"}
    texts = {}
    for graphs in (True, False):
        for count in (1, 64):
            sampler = Sampler(model, corpus.vocab, device)
            if not graphs:
                sampler.use_graphs = False
            request = Request(prime=" ", length=settings["sample_chars"], count=count, seed=0)
            warm_up = Request(prime=" ", length=200, count=count, seed=0)  # long enough to record the graph
            list(sampler.generate(warm_up, Decoding(1.0)))
            sync(device)
            start = time.perf_counter()
            steps = sum(1 for _ in sampler.generate(request, Decoding(1.0)))
            sync(device)
            name = f"batch{count}_chars_per_s" + ("" if graphs else "_op_by_op")
            result[name] = round(steps * count / (time.perf_counter() - start))
            if graphs:
                result[f"batch{count}_graph_error"] = sampler.graph_error
        sampler = Sampler(model, corpus.vocab, device)
        if not graphs:
            sampler.use_graphs = False
        texts[graphs] = "".join(c[0] for c in sampler.generate(Request(prime=" ", length=500, seed=0), Decoding(0.0)))
    result["greedy_same_text"] = texts[True] == texts[False]
    return result


def train_command(device: torch.device, corpus: Path, budget: str, run: Path, flags=("--preset", "auto")) -> list:
    command = [sys.executable, "-m", "charrnn", "train", str(corpus), *flags, "--device", str(device)]
    return command + ["--max-time", budget, "-o", str(run), "--sample-length", "0", "--quiet"]


def run_summary(run: Path, proc: subprocess.CompletedProcess, wall: float) -> dict:
    """What a finished `charrnn train` recorded: settings, the whole-text figure, the curve."""
    result = {"exit_code": proc.returncode, "wall_s": round(wall, 1)}
    if proc.returncode != 0:
        return result | {"stderr": proc.stderr[-2000:]}
    records = metrics.read(run)
    run_json = json.loads((run / "run.json").read_text())
    final = json.loads((run / "result.json").read_text())
    return result | {
        "preset": run_json.get("preset"),
        "why": run_json.get("why"),
        "model": run_json.get("model"),
        "train": {
            k: run_json["train"].get(k) for k in ("batch_size", "seq_len", "lr", "weight_decay", "ema", "precision")
        },
        "steps": final.get("steps"),
        "epochs": final.get("epochs"),
        "elapsed": final.get("elapsed"),
        "stopped_by": final.get("stopped_by"),
        "val_loss_whole_text": final.get("val_loss"),
        "kept": final.get("kept"),
        "chars_per_s": [r["chars_per_sec"] for r in records if "chars_per_sec" in r][-1:],
        "val_curve": [(r["step"], round(r["time"], 1), round(r["val_loss"], 4)) for r in records if "val_loss" in r],
    }


def quality(device: torch.device, settings: dict, corpus: Path, runs: dict) -> dict:
    """The real command as a user runs it, then the validation loss its run recorded."""
    run = Path(tempfile.mkdtemp()) / "run"
    command = train_command(device, corpus, settings["quality_time"], run)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    runs["quality"] = run
    return {"command": " ".join(command[1:])} | run_summary(run, proc, time.perf_counter() - start)


def cli(device: torch.device, settings: dict, corpus: Path, runs: dict) -> dict:
    """`charrnn sample` and `eval` on the GPU from the quality run, and a one-process torchrun."""
    run, result = runs["quality"], {}
    commands = {
        "sample_batch1": ["sample", str(run), "-n", "3000", "--seed", "1", "--device", str(device)],
        "sample_count64": ["sample", str(run), "-n", "1000", "--count", "64", "--jsonl", "--seed", "1"]
        + ["--device", str(device)],
        "eval": ["eval", str(run), str(corpus), "--device", str(device), "--json"],
    }
    for name, args in commands.items():
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, text=True)
        result[name] = {"exit_code": proc.returncode, "wall_s": round(time.perf_counter() - start, 2)}
        result[name]["stdout_head"] = proc.stdout[:400]
        result[name]["stderr_tail"] = proc.stderr[-600:]
    torchrun = Path(tempfile.mkdtemp()) / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m"]
    command += ["charrnn", "train", str(corpus), "--device", str(device), "--max-steps", str(settings["cli_steps"])]
    command += ["-o", str(torchrun), "--sample-length", "0", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    result["torchrun_1"] = {"exit_code": proc.returncode, "wall_s": round(time.perf_counter() - start, 2)}
    result["torchrun_1"]["stderr_tail"] = proc.stderr[-1500:]
    if proc.returncode == 0:
        result["torchrun_1"]["result"] = json.loads((torchrun / "result.json").read_text())
    return result


def grid(device: torch.device, settings: dict, corpus: Path, candidates: dict) -> dict:
    """Candidate settings at the quality budget, started together on the one device."""
    root = Path(tempfile.mkdtemp())
    procs = {}
    for name, flags in candidates.items():
        command = train_command(device, corpus, settings["quality_time"], root / name, flags)
        procs[name] = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), command)
    start, result = time.perf_counter(), {"corpus": corpus.name, "concurrent_runs": len(candidates)}
    for name, (proc, command) in procs.items():
        stdout, stderr = proc.communicate()
        done = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
        result[name] = {"flags": " ".join(candidates[name])} | run_summary(
            root / name, done, time.perf_counter() - start
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path, help="the text for the quality phase (tiny-shakespeare)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script itself")
    parser.add_argument("--only", help="the phases to run, comma-separated (default: all)")
    parser.add_argument(
        "--grid", choices=[*GRIDS, "none"], default="small", help="the settings the grid phase compares"
    )
    parser.add_argument("--grid-corpus", type=Path, help="the grid phase's text (default: the corpus)")
    args = parser.parse_args()
    if not args.corpus.is_file():
        parser.error(f"{args.corpus}: no such file; pass the path of tiny-shakespeare")
    device = resolve_device(args.device)
    settings = QUICK if args.quick else FULL
    results: dict = {"quick": args.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # for the CLI subprocess
    runs: dict = {}
    phases = [
        ("environment", lambda: environment(device, settings)),
        ("peak", lambda: peak(device, settings)),
        ("dtypes", lambda: dtypes(device, settings)),
        ("training", lambda: training(device, settings, results.get("peak", {}).get("bf16_tflops"))),
        ("sampling", lambda: sampling(device, settings)),
        ("quality", lambda: quality(device, settings, args.corpus, runs)),
        ("cli", lambda: cli(device, settings, args.corpus, runs)),
        ("grid", lambda: grid(device, settings, args.grid_corpus or args.corpus, GRIDS[args.grid])),
    ]
    only = set(args.only.split(",")) if args.only else {name for name, _ in phases}
    if args.grid == "none":
        only.discard("grid")
    for name, phase in phases:
        if name not in only:
            continue
        start = time.perf_counter()
        try:
            results[name] = phase()
        except Exception as e:  # record it and go on: a GPU run is too rare to lose to one phase
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: {json.dumps(results[name])[:3000]}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
