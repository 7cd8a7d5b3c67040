"""The house rules of the code's layout, so that they hold as features land: modules a reader can
hold in their head, thin command modules, no import circle, no import from a lower layer to a
higher one, every named choice written once, and comments free of benchmark diaries."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from charrnn import choices

PACKAGE = Path(__file__).resolve().parent.parent / "charrnn"
# Lower layers never import higher ones: the base, then data and the model, storage, what uses a
# stored model (training, generation), serving, the public API, and the command line at the top.
LAYERS = {
    "errors": 0, "choices": 0, "files": 0, "config": 1, "records": 1, "device": 2, "data": 2, "model": 3,
    "storage": 4, "training": 5, "generation": 5, "serving": 6, "api": 7, "cli": 8, "__init__": 9, "__main__": 9,
}  # fmt: skip


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charrnn"):
            found.update([node.module] if node.module != "charrnn" else [f"charrnn.{a.name}" for a in node.names])
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_modules_are_small_and_command_modules_smaller():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert {n: s for n, s in sizes.items() if s > 400} == {}
    commands = {n: s for n, s in sizes.items() if "@friendly" in modules()[n].read_text(encoding="utf-8") and s > 250}
    assert commands == {}


def test_no_import_goes_up_a_layer():
    upward = []
    for name, path in modules().items():
        for target in imports(path):
            if target == "charrnn.__version__" or layer(target) not in LAYERS:
                continue
            if LAYERS[layer(target)] > LAYERS[layer(name.removesuffix(".__init__"))]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_no_import_circle():
    graph = {name.removesuffix(".__init__"): imports(path, top_level_only=True) for name, path in modules().items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in path, " -> ".join([*path[path.index(node) :], node])
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, [*path, node])
        done.add(node)

    for node in graph:
        visit(node, [])


@pytest.mark.parametrize("choice", [choices.Cell, choices.Precision, choices.Preset, choices.DecodingErrors,
                                    choices.Unknown, choices.Checkpoint, choices.LogFormat])  # fmt: skip
def test_each_choice_is_listed_in_one_place(choice):
    """A list of a choice's values ("error", "skip", "replace") appears in choices.py and nowhere else."""
    values = choices.values(choice)
    listed = re.compile(r"""["']""" + r"""["'],\s*["']""".join(map(re.escape, values)) + r"""["']""")
    holders = [name for name, path in modules().items() if listed.search(path.read_text(encoding="utf-8"))]
    assert holders == ["charrnn.choices"]


def test_comments_say_what_and_why_not_where_it_was_measured():
    """Figures belong in the docs beside the command that measures them, not in the code."""
    diary = re.compile(r"benchmarks/README|2-core machine|\bH[12]00\b|(?<!training )\bsessions?\b|issue \d+", re.I)
    found = []
    for name, path in modules().items():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            text = line.split("#", 1)[1] if "#" in line else line
            if diary.search(text) and "TrainingSession" not in line and "session" not in line.split("#")[0]:
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []
