"""Sampling: prime the model with text, then draw characters one at a time.

The prime goes through the model's own batched forward pass; each new character goes through
`FastStep`. Several samples (`count`) run side by side as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from charrnn.corpus import Vocab
from charrnn.errors import CheckpointError, UsageError
from charrnn.inference import FastStep
from charrnn.model import CharRNN

# A temperature this small leaves all the probability on the most likely character anyway; dividing
# by it would overflow float32 logits to inf (1e-40) or divide by zero (5e-324, which is 0 in float32).
GREEDY_BELOW = 1e-6
# A prime is read this many characters at a time: in one call, a 200,000-character prime took 3 GB
# (every position's activations and logits) where its last logits are all that is needed.
PRIME_CHUNK = 16_384


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
        if not math.isfinite(self.temperature) or self.temperature < 0:
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
        self.graphs: dict | None = {}  # CUDA graphs of blocks of characters (`_graph`); None after a failure
        self.graph_error: str | None = None  # why recording failed, if it did

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
            graph = self._graph(steps, decoding)
            shape = (steps, *self.logits.shape)
            exponential = None if decoding.greedy else noise(shape, self.device, generator, graph and graph.exponential)
            if graph:
                ids, finite = graph.run(self, exponential)
            else:
                ids, finite = self._block(steps, decoding, exponential)
            if not finite.item():
                raise CheckpointError(
                    "the model's output is not a number (NaN or infinite logits): its weights are damaged "
                    "or overflowed in training; use another checkpoint"
                )
            left -= steps
            yield from ids.tolist()

    def _block(
        self, steps: int, decoding: Decoding, exponential: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `steps` characters from the current logits and state, moving both on: the ids (steps,
        rows), and whether every logit on the way was a number (a device tensor: no wait)."""
        finite, drawn = torch.ones((), dtype=torch.bool, device=self.device), []
        for k in range(steps):
            finite &= torch.isfinite(self.logits).all()
            ids = decoding.choose_with(self.logits, None if exponential is None else exponential[k])
            self.logits, self.state = self.fast.step(ids, self.state)
            drawn.append(ids)
        return torch.stack(drawn), finite

    def _graph(self, steps: int, decoding: Decoding) -> _Graphed | None:
        """The CUDA graph of a block of `steps` characters with this decoding, recorded on first use;
        None off CUDA, for a short block (the last of a sample), or where recording failed."""
        if self.device.type != "cuda" or steps < 2 or steps != self.readback or self.graphs is None:
            return None
        key = (steps, self.count, decoding.temperature, decoding.top_k, decoding.top_p)
        if key not in self.graphs:
            try:
                self.graphs[key] = _Graphed(self, steps, decoding)
            except RuntimeError as e:  # an op that cannot be recorded: draw as before, one launch per op
                self.graphs = None
                self.graph_error = str(e).splitlines()[0] if str(e) else type(e).__name__
                return None
        return self.graphs[key]


class _Graphed:
    """A block of characters drawn on a CUDA device as one CUDA graph: what `Sampler._block` does,
    recorded once and replayed. At batch 1 the ~40 small kernels of each character cost far more to
    launch one by one than to run; replayed, the block's ~1,300 launch as one. The logits, state and
    random numbers live in buffers of the graph's own: `run` copies the sampler's in, and leaves
    the sampler holding the graph's."""

    def __init__(self, sampler: Sampler, steps: int, decoding: Decoding):
        self.logits = sampler.logits.clone()
        self.state = [
            tuple(map(torch.clone, layer)) if isinstance(layer, tuple) else layer.clone() for layer in sampler.state
        ]
        self.exponential = None if decoding.greedy else torch.ones((steps, *self.logits.shape), device=sampler.device)
        recorder = _Recorder(sampler, self, steps, decoding)
        side = torch.cuda.Stream(sampler.device)  # a warm-up run first, as torch.cuda.graph asks
        side.wait_stream(torch.cuda.current_stream(sampler.device))
        with torch.cuda.stream(side):
            recorder()
        torch.cuda.current_stream(sampler.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.ids, self.finite = recorder()

    def run(self, sampler: Sampler, exponential: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if sampler.logits is not self.logits:
            self.logits.copy_(sampler.logits)
            _copy_state(self.state, sampler.state)
        if exponential is not None and exponential is not self.exponential:
            self.exponential.copy_(exponential)
        self.graph.replay()
        sampler.logits, sampler.state = self.logits, self.state
        return self.ids, self.finite


class _Recorder:
    """The block a `_Graphed` records: from its buffers, `steps` characters, ending with the logits and
    state written back into its buffers for the next replay."""

    def __init__(self, sampler: Sampler, graphed: _Graphed, steps: int, decoding: Decoding):
        self.fast, self.graphed, self.steps, self.decoding = sampler.fast, graphed, steps, decoding
        self.device = sampler.device

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.graphed
        logits, state = g.logits, g.state
        finite, drawn = torch.ones((), dtype=torch.bool, device=self.device), []
        for k in range(self.steps):
            finite = finite & torch.isfinite(logits).all()
            ids = self.decoding.choose_with(logits, None if g.exponential is None else g.exponential[k])
            logits, state = self.fast.step(ids, state)
            drawn.append(ids)
        g.logits.copy_(logits)
        _copy_state(g.state, state)
        return torch.stack(drawn), finite


def _copy_state(into: list, state: list) -> None:
    """Copy FastStep's per-layer `state` (a tensor or an (h, c) pair per layer) into `into`'s tensors."""
    for mine, theirs in zip(into, state):
        for a, b in zip(*((mine, theirs) if isinstance(mine, tuple) else ((mine,), (theirs,)))):
            a.copy_(b)


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
