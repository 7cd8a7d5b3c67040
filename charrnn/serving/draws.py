"""Drawing the next characters of a batch's rows: the rows of requests that share a decoding are
drawn in one call (`Group`), each request's from its own random generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from charrnn.generation.sampler import Decoding, noise

if TYPE_CHECKING:
    from charrnn.serving.engine import _Running


@dataclass(eq=False)
class Group:
    """Rows drawn together: requests with the same decoding, all seeded or all not.

    `torch.multinomial` draws one sample per row as argmax(probs / q), q ~ Exp(1) of the shape of
    `probs`, from the generator it is given. Drawing q per seeded request from its own generator,
    with its own shape, then dividing and taking the argmax for the whole group, gives exactly the
    characters `Decoding.choose` (and so `charrnn sample`) gives (tests/test_engine.py), in one
    call for the group instead of one per request."""

    decoding: Decoding
    index: torch.Tensor | None  # the group's rows of the batch; None: every row
    draws: list[tuple[torch.Generator | None, int]]  # (generator, rows) per request, in row order

    @staticmethod
    def of(jobs: list[_Running]) -> list[Group]:
        found: dict[tuple, tuple[Decoding, list[int], list]] = {}
        start = 0
        for r in jobs:
            d, count = r.job.decoding, r.job.count
            key = (d.temperature, d.top_k, d.top_p, r.generator is None)
            decoding, rows, draws = found.setdefault(key, (d, [], []))
            rows.extend(range(start, start + count))
            if r.generator is None and draws:  # unseeded rows share torch's global generator
                draws[0] = (None, draws[0][1] + count)
            else:
                draws.append((r.generator, count))
            start += count
        if len(found) == 1:
            decoding, _, draws = next(iter(found.values()))
            return [Group(decoding, None, draws)]
        return [Group(d, torch.tensor(rows), draws) for d, rows, draws in found.values()]

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next ids of the group's rows, from their logits."""
        if self.decoding.greedy:
            return logits.argmax(dim=-1)
        drawn = [noise((n, logits.shape[-1]), logits.device, g) for g, n in self.draws]
        return self.decoding.choose_with(logits, drawn[0] if len(drawn) == 1 else torch.cat(drawn))
