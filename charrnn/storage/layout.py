"""The run directory: its files, the one-writer lock, the latest/best pointers, and finding a checkpoint in it.

    runs/NAME/
      run.json                     how the run was started: model, vocabulary, settings, corpus
      metrics.jsonl                one JSON record per log or eval step
      latest.json, best.json       pointers {"checkpoint": "step-..."}; they move only after a save completes
      result.json                  how the last training command ended: the model kept and why
      .lock                        held (flock) by the one process writing the run; holds its PID
      checkpoints/step-00001200-val1.4321/   one checkpoint (storage/checkpoints.py)

One process at a time writes a run (`claim`); readers need no lock."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per run is then up to the user
    fcntl = None

from charrnn.errors import CharRNNError, CheckpointError, UsageError
from charrnn.files import is_temporary, write_json

CHECKPOINTS = "checkpoints"


MANIFEST = "manifest.json"


RESULT = "result.json"


LOCK = ".lock"


RUN_FILES = {"run.json", "metrics.jsonl", "latest.json", "best.json", RESULT, CHECKPOINTS, LOCK}


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete, use another one")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is damaged, use another checkpoint")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; the file is damaged, use another checkpoint")
    return data


def record_resume(run: Path, step: int | None, before: dict, after: dict) -> None:
    """Add to run.json the training settings a resume changed (e.g. a new --lr), so that the run's
    record tells its whole story. Nothing changes when nothing changed."""
    changed = {k: {"from": before.get(k), "to": v} for k, v in after.items() if before.get(k) != v}
    path = run / "run.json"
    if not changed or not path.is_file():
        return
    record = read_json(path)
    record.setdefault("resumes", []).append({"step": step, "changed": changed})
    write_json(path, record)


class RunLock:
    """An exclusive advisory lock (flock) on RUN/.lock, held by the one process that writes the run.

    The kernel drops it when the process ends, however it ends (kill -9 too), so a crash never leaves a
    run locked; the PID written into the file only names the holder in the message to a second writer."""

    def __init__(self, run: Path, new: bool = True):
        self.fd: int | None = None
        if fcntl is None:
            return
        self.fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            self.release()
            raise CharRNNError(
                f"{run}: another charrnn process (PID {holder}) is writing this run; wait for it to finish"
                + (", stop it, or choose another --out" if new else " or stop it")
            ) from None
        except OSError:  # a file system without locks (some network mounts): carry on unlocked
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            with suppress(OSError):
                os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def claim(run: Path, new: bool) -> RunLock:
    """Take `run` for writing: lock it, and for a new run refuse a file, a directory of other things, or
    a run that already has checkpoints. The caller releases the lock (process exit does too)."""
    if new:
        if run.exists() and not run.is_dir():
            raise CharRNNError(f"{run}: is a file, not a run directory; choose another --out")
        run.mkdir(parents=True, exist_ok=True)
    elif not run.is_dir():
        resolve(run)  # says what is wrong with it: missing, a file, a pickle
    lock = RunLock(run, new)
    if new:
        entries = sorted(p.name for p in run.iterdir() if p.name != LOCK and not is_temporary(p.name))
        stray = [name for name in entries if name not in RUN_FILES]
        if "run.json" not in entries:  # metrics.jsonl or best.json alone may well be someone else's
            stray = stray or entries
        problem = ""
        if stray:
            problem = f"holds {stray[0]!r}, so it is not a charrnn run; choose a new or empty directory for --out"
        elif list_checkpoints(run):
            problem = f"a run already exists there; pass --resume {run} to continue it or choose another --out"
        if problem:
            lock.release()
            raise CharRNNError(f"{run}: {problem}")
    return lock


def fresh_run_dir(parent: Path, stem: str, create: bool = True) -> Path:
    """parent/stem, or stem-2, stem-3... : a directory made here and now (mkdir is atomic), so two runs
    started in the same second never share one. `create=False` only names it (other DDP ranks)."""
    if not create:
        return parent / stem
    if parent.exists() and not parent.is_dir():
        raise CharRNNError(f"{parent}: is a file, not a folder for runs; move it, or pass --out DIR")
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CharRNNError(f"{parent}: too many runs named {stem}; pass --out")


def writer_dir(path: str | Path) -> Path:
    """The run directory that `--resume PATH` writes to: PATH, or the run of a checkpoint folder. A
    checkpoint outside a run (a copy) has no run to continue: writing next to it would put a run's
    files among the user's own."""
    p = Path(path)
    if not (p / MANIFEST).is_file():
        return p
    run = run_of(p)
    if run is None:
        raise UsageError(
            f"--resume {p}: this checkpoint is not inside a run directory (RUN/{CHECKPOINTS}/...), so there is "
            f"no run to continue; --init-from {p} -o NEW_RUN starts a new run from its weights"
        )
    return run


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and not folder.name.startswith(".") and (folder / MANIFEST).is_file()


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_complete(p)), key=lambda p: p.name)


def pointer(run: Path, name: str) -> Path | None:
    """The checkpoint that `latest.json` or `best.json` points at, if it is complete."""
    try:
        target = json.loads((run / f"{name}.json").read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = run / CHECKPOINTS / str(target)
    return path if is_complete(path) else None


def point(run: Path, name: str, checkpoint: Path) -> None:
    """Move the `latest` or `best` pointer to a complete checkpoint."""
    write_json(run / f"{name}.json", {"checkpoint": checkpoint.name})


def resolve(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint folder from a run directory (its latest, or best, complete checkpoint) or a
    checkpoint folder itself. Anything else, pickles included, is refused before it is read."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such run or checkpoint; pass a run directory such as runs/NAME")
    if p.is_file():
        kind = (
            "a pickle file, which can run code when loaded"
            if p.suffix in {".pt", ".pth", ".pkl", ".bin", ".ckpt"}
            else "a file"
        )
        raise CheckpointError(
            f"{p}: is {kind}; charrnn loads only its own run or checkpoint folders (safetensors + JSON)"
        )
    if (p / MANIFEST).exists():
        return p
    if (p / CHECKPOINTS).is_dir() or (p / "run.json").exists():
        # Follow the pointers, which move only after a save completes and only by the run's one writer;
        # without one (a crash between a save and its pointer, an old run), the newest complete checkpoint.
        latest = pointer(p, "latest") or (list_checkpoints(p) or [None])[-1]
        found = (pointer(p, "best") or latest) if which == "best" else latest
        if found is None:
            raise CheckpointError(f"{p}: the run has no complete checkpoint yet; train it first")
        return found
    raise CheckpointError(f"{p}: not a charrnn run or checkpoint folder (no {MANIFEST} or {CHECKPOINTS}/)")


def is_model_path(path: str | Path) -> bool:
    """Whether `path` looks like a run or checkpoint folder (as opposed to text to read)."""
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in (MANIFEST, "run.json", CHECKPOINTS))


def run_of(checkpoint: Path) -> Path | None:
    """The run directory holding a checkpoint folder (RUN/checkpoints/step-...), or None for a
    checkpoint folder outside one (a copy). A relative path stays relative: from inside RUN/checkpoints/,
    `step-...` belongs to `..`."""
    folder = Path(os.path.abspath(checkpoint))
    if folder.parent.name != CHECKPOINTS or not (folder.parent.parent / "run.json").is_file():
        return None
    return Path(os.path.normpath(os.path.join(checkpoint, os.pardir, os.pardir)))


def _val_loss(checkpoint: Path) -> float:
    try:
        value = json.loads((checkpoint / MANIFEST).read_text()).get("val_loss")
    except (OSError, ValueError):
        return float("inf")
    return float("inf") if value is None else float(value)


def set_aside(folder: Path) -> None:
    """Remove a checkpoint folder: renamed to a temporary name first (readers and `list_checkpoints`
    skip those at once, and a crash leaves only a temporary to clean), then deleted."""
    if not folder.exists():
        return
    aside = folder.with_name(f".tmp-aside-{folder.name}-{os.getpid()}")
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def discard_abandoned(run: Path) -> list[str]:
    """Checkpoints newer than the one the latest pointer reaches: a branch the run abandoned (a
    crash between a checkpoint's rename and the pointer's move). A resume goes on from the pointer,
    so they are set aside before it saves anything; returns their names."""
    latest = pointer(run, "latest")
    if latest is None:
        return []
    abandoned = [c for c in list_checkpoints(run) if _step(c) > _step(latest)]
    for folder in abandoned:
        set_aside(folder)
    return [c.name for c in abandoned]


def _step(checkpoint: Path) -> int:
    try:
        return int(checkpoint.name.split("-")[1])
    except (IndexError, ValueError):
        return -1


def prune(run: Path, keep: int) -> None:
    """Keep the `keep` newest complete checkpoints plus the ones `latest` and `best` point at;
    remove leftovers of interrupted saves. Never removes the only good checkpoint."""
    complete = list_checkpoints(run)
    protected = {p for p in (pointer(run, "latest"), pointer(run, "best")) if p}
    protected.update(complete[-max(keep, 1) :])
    for p in complete:
        if p not in protected:
            shutil.rmtree(p, ignore_errors=True)
    for p in (run / CHECKPOINTS).glob(".tmp-*"):
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
