"""files.py: a replaced file is the old one or the whole new one, and no temporary is left behind."""

import json
import os
import stat
import threading

import pytest

from charrnn import files


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("old")
    files.atomic_write(path, "new ü")
    files.atomic_write(tmp_path / "weights.bin", b"\x00\x01")
    assert path.read_text(encoding="utf-8") == "new ü"
    assert (tmp_path / "weights.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "weights.bin"]


def test_a_write_that_fails_midway_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "latest.json"
    files.write_json(path, {"checkpoint": "step-1"})
    with pytest.raises(OSError, match="disk full"), files.replacing(path) as tmp:
        tmp.write_text('{"checkpoint": "st')  # half of the new version is on disk...
        raise OSError("disk full")  # ...when the write fails
    assert json.loads(path.read_text()) == {"checkpoint": "step-1"}
    assert [p.name for p in tmp_path.iterdir()] == ["latest.json"]


def test_a_block_that_writes_nothing_cannot_replace_the_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("kept")
    with pytest.raises(FileNotFoundError), files.replacing(path):
        pass  # nothing written: no empty file in its place
    assert path.read_text() == "kept"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX links and named pipes")
def test_a_link_stays_a_link_and_a_pipe_a_pipe(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    files.atomic_write(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    pipe = tmp_path / "pipe"  # as /dev/stdout or /dev/full: written into, never replaced by a file
    os.mkfifo(pipe)
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    files.atomic_write(pipe, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(pipe.stat().st_mode)


def test_temporary_names_are_unique_hidden_and_recognised(tmp_path):
    names = {files.temporary(tmp_path / "model.safetensors").name for _ in range(50)}
    assert len(names) == 50
    assert all(files.is_temporary(n) for n in names)
    assert not files.is_temporary("model.safetensors") and not files.is_temporary(".lock")
