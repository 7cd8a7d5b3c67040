"""Sampling: prime the model with text, then draw characters one at a time.

The prime goes through the model's own batched forward pass; each new character goes through
`FastStep`. Several samples (`count`) run side by side as one batch.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from charrnn.data.vocab import Vocab
from charrnn.errors import CheckpointError, UsageError
from charrnn.model.fast_step import FastStep, map_state
from charrnn.model.network import CharRNN

# A temperature this small leaves all the probability on the most likely character anyway; dividing
# by it would overflow float32 logits to inf (1e-40) or divide by zero (5e-324, which is 0 in float32).
GREEDY_BELOW = 1e-6
# A prime is read this many characters at a time: in one call, a 200,000-character prime took 3 GB
# (every position's activations and logits) where its last logits are all that is needed.
PRIME_CHUNK = 16_384
# On CUDA a block of characters is recorded as a CUDA graph (`_Graphed`) for samples of at least this
# many blocks: recording costs about three blocks drawn op by op, and each replayed block saves most
# of one. The graphs of the most recent decodings are kept with the model, at most GRAPHS_KEPT.
GRAPH_FROM_BLOCKS = 4
GRAPHS_KEPT = 8
# One CUDA graph is recorded or replayed at a time in the process: PyTorch allows one capture at a
# time, and the graphs and their cache are shared by the samplers of a model (threads of a program).
_GRAPHS_LOCK = threading.RLock()


@dataclass
class Decoding:
    """How the next character is chosen from the model's distribution."""

    temperature: float = 1.0  # 0 (or below GREEDY_BELOW) = greedy: always the most likely character
    top_k: int | None = None  # only the k most likely characters; 0 or None: no limit
    top_p: float | None = None  # only the smallest set whose probability reaches p (nucleus)

    def __post_init__(self) -> None:
        for name in ("temperature", "top_k", "top_p"):  # from the Python API, anything may come
            value, whole = getattr(self, name), name == "top_k"
            if value is not None and (isinstance(value, bool) or not isinstance(value, int if whole else (int, float))):
                raise UsageError(f"--{name.replace('_', '-')} {value!r}: must be a {'whole ' if whole else ''}number")
        if self.temperature is None or not math.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"--temperature {self.temperature}: must be a number >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 0:
            raise UsageError(f"--top-k {self.top_k}: must be at least 1 (or 0: no limit)")
        self.top_k = self.top_k or None
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p {self.top_p}: must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Next ids (batch,) from logits (batch, vocab)."""
        return self.choose_with(logits, None if self.greedy else noise(logits.shape, logits.device, generator))

    def choose_with(self, logits: torch.Tensor, exponential: torch.Tensor | None) -> torch.Tensor:
        """`choose` with its random numbers given: `exponential` from `noise`, one per character.
        torch.multinomial draws one sample as argmax(probs / exponential), the same characters from
        the same generator, but first reads the probabilities back to check them: on a GPU, a wait
        on every character, and no CUDA graph can hold it."""
        if self.greedy:
            return logits.argmax(dim=-1)
        return (self.probs(logits) / exponential).argmax(dim=-1)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution (batch, vocab) that `choose` draws from: temperature, top-k, then top-p."""
        logits = logits.float() / self.temperature
        # A row with NaN or inf has no distribution to draw from; draw from it uniformly instead (on
        # a GPU, multinomial would stop the process with a device-side assert). `Sampler` reports such
        # logits itself.
        logits = logits.masked_fill(~torch.isfinite(logits).all(dim=-1, keepdim=True), 0.0)
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p is not None and self.top_p < 1:
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            # Drop a character when the ones more likely than it already reach top_p.
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return probs


@dataclass
class Request:
    prime: str = ""
    length: int = 1000
    count: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


class Sampler:
    """Holds a model and its hidden state; `generate` yields text as it is drawn.

    The ids drawn are read back to the host every `readback` characters: each read waits for the
    device, and on a GPU that wait per character would cost more than the step itself. On a CPU
    (readback 1) text streams out as it is drawn."""

    def __init__(
        self,
        model: CharRNN,
        vocab: Vocab,
        device: torch.device | str = "cpu",
        readback: int | None = None,
        fast: FastStep | None = None,
    ):
        self.model = model.eval()
        self.vocab = vocab
        self.device = torch.device(device)
        self.readback = readback or (1 if self.device.type == "cpu" else 32)
        self.fast = fast or FastStep(model)  # samplers of one model can share its (read-only) step weights
        self.state: list | None = None  # FastStep's per-layer state
        self.count = 0
        self.logits: torch.Tensor | None = None
        self.use_graphs = self.device.type == "cuda"  # blocks of characters as CUDA graphs (`_graph`)

    def encode_prime(self, text: str, unknown: str = "error", source: str = "prime") -> str:
        """The prime with the unknown-character policy applied (error, skip or replace)."""
        if not text:
            return text
        return self.vocab.decode(self.vocab.encode(text, unknown, source=source).tolist())

    @torch.no_grad()
    def feed(self, text: str, count: int = 1) -> None:
        """Run `text` through the model (batched over `count` rows, PRIME_CHUNK characters a call),
        continuing from the current state.

        A fresh state first reads a paragraph break ("\n\n", where the vocabulary has it), unseen in
        the output: the model was trained on text whose state is always warm, and reads a prime far
        better as the start of a paragraph than from an all-zero state (a zero state after "ROMEO:"
        predicted '&'; after "\n\nROMEO:" a newline, as the play does)."""
        if self.state is None or self.count != count:
            self.state = self.fast.from_module(self.model.initial_state(count, self.device))
            self.count = count
            text = self._warmup() + text
        if not text:
            return
        ids = torch.as_tensor(self.vocab.encode(text).astype("int64"), device=self.device)
        state = self.fast.to_module(self.state)
        for start in range(0, len(ids), PRIME_CHUNK):  # a book as the prime: memory stays flat
            logits, state = self.model(ids[start : start + PRIME_CHUNK].unsqueeze(0).expand(count, -1), state)
        self.state = self.fast.from_module(state)
        self.logits = logits[:, -1]

    @torch.no_grad()
    def feed_rows(self, texts: list[str]) -> None:
        """A fresh state primed with one text per row, texts of one length, in one batched call:
        `feed` for several prompts at once (the rows differ from `feed`'s only by float rounding)."""
        rows = [self.vocab.encode(self._warmup() + text).astype("int64") for text in texts]
        ids = torch.as_tensor(np.stack(rows), device=self.device)
        logits, state = self.model(ids, self.model.initial_state(len(texts), self.device))
        self.state, self.count, self.logits = self.fast.from_module(state), len(texts), logits[:, -1]

    def _warmup(self) -> str:
        return "".join(c for c in "\n\n" if c in self.vocab.index) or self.vocab.chars[0]

    def reset(self) -> None:
        self.state, self.logits = None, None

    @torch.no_grad()
    def generate(self, request: Request, decoding: Decoding) -> Iterator[list[str]]:
        """Yield, per step, the new character of every sample still running ("" once one has
        stopped). Stops at `length` characters or when each sample has produced a stop string."""
        self.feed(request.prime, request.count)
        generator = make_generator(request.seed, self.device)
        stops = Stops(request.stop, request.count)
        chars_of = self.vocab.chars
        for ids in self._draw(request.length, decoding, generator):
            yield stops.advance([chars_of[i] for i in ids])
            if all(stops.done):
                return

    def _draw(self, length: int, decoding: Decoding, generator: torch.Generator | None) -> Iterator[list[int]]:
        """The ids of each of `length` steps, drawn on the device and read back `readback` steps at a time."""
        left = length
        while left > 0:
            steps = min(left, self.readback)
            with _GRAPHS_LOCK if self.use_graphs else contextlib.nullcontext():
                graph = self._graph(decoding, length) if steps == self.readback else None
                if graph:
                    ids, finite = graph.replay(self, generator)
                else:
                    # a whole block's random numbers even for the last, shorter one: a seed then gives
                    # the same characters whatever the length (on a GPU the numbers depend on the shape)
                    shape = (self.readback, *self.logits.shape)
                    exponential = None if decoding.greedy else noise(shape, self.device, generator)
                    self.logits, self.state, ids, finite = _steps(
                        self.fast, decoding, steps, self.logits, self.state, exponential
                    )
            if not finite.item():
                raise CheckpointError(
                    "the model's output is not a number (NaN or infinite logits): its weights are damaged "
                    "or overflowed in training; use another checkpoint"
                )
            left -= steps
            yield from ids.tolist()

    def _graph(self, decoding: Decoding, length: int) -> _Graphed | None:
        """The CUDA graph of a block of `readback` characters with this decoding, recorded on first
        use and kept with the model's FastStep for every sampler of it; None off CUDA, for a sample
        too short to pay for the recording, or where recording failed."""
        fast = self.fast
        if not self.use_graphs or self.readback < 2 or fast.graph_error is not None:
            return None
        key = (self.readback, self.count, decoding.temperature, decoding.top_k, decoding.top_p)
        if key in fast.graphs:
            fast.graphs[key] = fast.graphs.pop(key)  # the most recently used last
            return fast.graphs[key]
        if length < GRAPH_FROM_BLOCKS * self.readback:
            return None
        try:
            graph = _Graphed(self, decoding)
        except RuntimeError as e:  # draw as before, one launch per op (a failed recording may leave
            # PyTorch's allocator unsure whether a capture is still underway)
            fast.graph_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            return None
        fast.graphs[key] = graph
        if len(fast.graphs) > GRAPHS_KEPT:
            fast.graphs.pop(next(iter(fast.graphs)))
        return graph

    @property
    def graph_error(self) -> str | None:
        """Why recording a CUDA graph failed for this model, if it did (sampling then goes op by op)."""
        return self.fast.graph_error


def _steps(fast: FastStep, decoding: Decoding, steps: int, logits, state, exponential):
    """`steps` characters drawn from `logits` and `state` with `exponential[k]` at step k: the new
    logits and state, the ids (steps, rows), and whether every logit on the way was a number (a
    device tensor: no wait)."""
    finite, drawn = torch.ones((), dtype=torch.bool, device=logits.device), []
    for k in range(steps):
        finite = finite & torch.isfinite(logits).all()
        ids = decoding.choose_with(logits, None if exponential is None else exponential[k])
        logits, state = fast.step(ids, state)
        drawn.append(ids)
    return logits, state, torch.stack(drawn), finite


class _Graphed:
    """A block of characters drawn on a CUDA device as one CUDA graph: what `_steps` does,
    recorded once and replayed. At batch 1 the ~40 small kernels of each character cost far more to
    launch one by one than to run; replayed, the block's ~1,300 launch as one. The logits, state and
    random numbers live in buffers of the graph's own: `run` copies a sampler's in and the results
    out, so the samplers of one model can share it (under _GRAPHS_LOCK). It holds no reference to
    the FastStep that keeps it: the two would keep each other's GPU memory until a full collection."""

    def __init__(self, sampler: Sampler, decoding: Decoding):
        self.decoding, self.steps, self.device = decoding, sampler.readback, sampler.device
        self.logits = sampler.logits.clone()
        self.state = map_state(torch.clone, sampler.state)
        shape = (self.steps, *self.logits.shape)
        self.exponential = None if decoding.greedy else torch.ones(shape, device=self.device)
        with torch.cuda.device(self.device):  # cuda:1 while cuda:0 is current, say
            side = torch.cuda.Stream()  # a warm-up run first, as torch.cuda.graph asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._record(sampler.fast)
            torch.cuda.current_stream().wait_stream(side)
            self.graph, current = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
            try:
                with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
                    self.ids, self.finite = self._record(sampler.fast)
            finally:  # a recording that fails can leave its stream current
                torch.cuda.set_stream(current)

    def _record(self, fast: FastStep) -> tuple[torch.Tensor, torch.Tensor]:
        """The block, from the buffers and back into them for the next replay: the ids and `finite`."""
        logits, state, ids, finite = _steps(fast, self.decoding, self.steps, self.logits, self.state, self.exponential)
        self.logits.copy_(logits)
        map_state(torch.Tensor.copy_, self.state, state)
        return ids, finite

    def replay(self, sampler: Sampler, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a block for `sampler`, moving its logits and state on: the ids (steps, rows) and `finite`."""
        with torch.cuda.device(self.device):
            self.logits.copy_(sampler.logits)
            map_state(torch.Tensor.copy_, self.state, sampler.state)
            if self.exponential is not None:
                noise(self.exponential.shape, self.device, generator, into=self.exponential)
            self.graph.replay()
            sampler.logits = self.logits.clone()
            sampler.state = map_state(torch.clone, self.state)
            return self.ids.clone(), self.finite.clone()


def noise(
    shape: tuple, device: torch.device, generator: torch.Generator | None, into: torch.Tensor | None = None
) -> torch.Tensor:
    """The random numbers `Decoding.choose_with` draws with, Exp(1) of the logits' shape (`into`
    that tensor when given): what torch.multinomial draws for one sample, so a seed gives the same
    characters as it did. A block of steps drawn at once on a CPU equals the steps drawn in turn."""
    out = into if into is not None else torch.empty(shape, device=device)
    return out.exponential_(1, generator=generator)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """The random source of one request: its own generator when seeded, else torch's global one."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


class Stops:
    """Which samples of a request have produced one of its stop strings."""

    def __init__(self, stop: list[str], count: int):
        self.stop = stop
        self.longest = max((len(s) for s in stop), default=0)
        self.done = [False] * count
        self.tails = [""] * count

    def advance(self, chars: list[str]) -> list[str]:
        """The new character of every sample still running, "" for those already stopped."""
        out = []
        for row, ch in enumerate(chars):
            if self.done[row]:
                out.append("")
                continue
            out.append(ch)
            if self.longest:
                self.tails[row] = (self.tails[row] + ch)[-self.longest :]
                if any(self.tails[row].endswith(s) for s in self.stop):
                    self.done[row] = True
        return out


def preview(model: CharRNN, vocab: Vocab, length: int, seed: int, device: torch.device | None = None) -> str:
    """`length` characters sampled from `model` at temperature 0.8: the samples a training run shows."""
    sampler = Sampler(model, vocab, device) if device is not None else Sampler(model, vocab)
    return "".join(c[0] for c in sampler.generate(Request(length=length, seed=seed), Decoding(0.8)))


def finish_reason(continuation: str, length: int, stop: list[str]) -> str:
    """Why a sample ended, as the OpenAI API says it: "stop" when a stop string ended it, else "length"."""
    return "stop" if len(continuation) < length or any(continuation.endswith(s) for s in stop if s) else "length"
