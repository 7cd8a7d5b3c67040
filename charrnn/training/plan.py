"""The settings `--preset auto` gives a run, from what is known before it starts: the device, the
time budget, the amount of training text and how fast the machine trains (measured by the run).

A pure function of typed inputs, so the choice is unit-tested and the command line, the Python API
and the benchmarks all get the same one. Every threshold comes from measurements on the corpus
panel, given with their commands in docs/design.md; flags given by the user override its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from charrnn import choices
from charrnn.config import PRESETS

# Training characters per second of each CPU preset, the speeds the thresholds below were tuned at. A
# run measures how fast `small` trains on its own machine, text and threads before it chooses
# (`speed`), and medium is taken to keep the ratio between the two; the table stands in where
# nothing was measured. The speed turns a time budget into passes over the text.
CPU_SPEED = {"small": 30_000, "medium": 17_000}
MEDIUM_FROM_SECONDS = 4 * 60  # on a CPU, budgets from here on get the medium preset...
MEDIUM_FROM_CHARS = 500_000  # ...if there is enough text not to overfit it
# From this many passes over the text a preset's model overfits it unless held back harder.
SMALL_TEXT_PASSES = {"small": 8, "medium": 20}
SMALL_TEXT = {"dropout": 0.3, "weight_decay": 0.1}  # a text read that often: stronger regularisation
# A text the budget would not let the chosen preset read 1.5 times gets a 1x256 model without
# dropout instead: it takes about three times the steps, and there the number of steps decides.
LARGE_TEXT_PASSES = 1.5
LARGE_TEXT = {"hidden_size": 256, "dropout": 0.0}
# On a GPU a text read many times wants many small steps too (`medium`); a text that `medium` could
# not read this many times in the budget gets `large`'s batches instead.
GPU_LARGE_TEXT_PASSES = 4


DEVICES = {"cpu": "a CPU", "cuda": "a CUDA GPU", "mps": "an MPS device"}  # as the first line names them


@dataclass(frozen=True)
class Choice:
    """What `--preset auto` (or a named preset) sets, and why, for the run's first line."""

    preset: str
    settings: dict  # model and training fields, as in PRESETS
    why: str
    passes: float | None = None  # passes over the training text the budget allows, as estimated
    decisive: tuple = ()  # settings the reason is about, where they are the preset's own (else: those changed)

    def changed(self) -> dict:
        """The settings that differ from the preset's own."""
        return {k: v for k, v in self.settings.items() if PRESETS[self.preset].get(k) != v}

    def decided(self) -> dict:
        """The settings the reason is about: a flag that replaces one of them is worth saying."""
        return {k: self.settings[k] for k in self.decisive} if self.decisive else self.changed()

    def describe(self) -> str:
        changed = self.changed()
        adjusted = ", ".join(f"{k.replace('_', '-')} {_number(v)}" for k, v in changed.items())
        return f"preset {self.preset}" + (f" with {adjusted}" if adjusted else "") + f" ({self.why})"


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def named(preset: str) -> Choice:
    choices.check(preset, choices.Preset, "--preset")
    return Choice(preset, dict(PRESETS[preset]), "as asked")


def choose(device_type: str, max_time: float | None, train_chars: int, speed: float | None = None) -> Choice:
    """The automatic settings for a run on `device_type` with a `max_time` budget (seconds; None
    for a step or epoch budget) over `train_chars` characters of training text, when
    `measured_preset` trains at `speed` characters per second on this machine (None: on a CPU,
    CPU_SPEED's; on a GPU or MPS, the `large` preset, unchosen)."""
    cpu, where = device_type == "cpu", DEVICES.get(device_type, f"a {device_type} device")
    if max_time is None:
        preset = "small" if cpu else "large"
        return Choice(preset, dict(PRESETS[preset]), f"{where} and a step or epoch budget")
    if not cpu and speed is None:  # MPS, several GPUs, fine-tuning: speed not measured
        return Choice("large", dict(PRESETS["large"]), f"{where}; its speed not measured")
    if cpu:
        preset = "medium" if max_time >= MEDIUM_FROM_SECONDS and train_chars >= MEDIUM_FROM_CHARS else "small"
        rate = (speed or CPU_SPEED["small"]) * CPU_SPEED[preset] / CPU_SPEED["small"]
    else:
        preset, rate = measured_preset(device_type), speed
    passes = rate * max_time / max(train_chars, 1)
    budget = f"{max_time:g}-second" if max_time < 120 else f"{max_time / 60:.3g}-minute"
    why = f"{where}, a {budget} budget and {train_chars:,} training characters"
    reading = "less than a tenth of a pass" if passes < 0.05 else f"about {passes:,.{0 if passes >= 10 else 1}f} passes"
    here = f" (about {rate:,.0f} characters a second here)" if speed else ""
    if cpu and passes < LARGE_TEXT_PASSES:
        why += f": {reading} over a large text{here}, so a smaller, faster model"
        return Choice("small", {**PRESETS["small"], **LARGE_TEXT}, why, passes)
    if not cpu and passes < GPU_LARGE_TEXT_PASSES:
        why += f": {reading} over a large text at medium's speed{here}, so larger batches"
        return Choice("large", dict(PRESETS["large"]), why, passes, ("batch_size", "seq_len"))
    settings = dict(PRESETS[preset])
    if passes >= SMALL_TEXT_PASSES[preset]:
        settings.update(SMALL_TEXT)
        return Choice(preset, settings, f"{why}: {reading} over a small text{here}, so more regularisation", passes)
    return Choice(preset, settings, f"{why}: {reading} over the text{here}", passes)


def measured_preset(device_type: str) -> str:
    """The preset whose measured speed turns a time budget into passes over the text: on a CPU
    `small` (medium's speed is taken to keep CPU_SPEED's ratio), on a GPU `medium`."""
    return "small" if device_type == "cpu" else "medium"
