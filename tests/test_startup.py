"""Commands that only show things start fast: they never import torch (nor numpy)."""

import json
import os
import subprocess
import sys

# Runs each command in one fresh interpreter, in order, and reports the heavy modules loaded after each.
PROBE = """
import json, sys
from charrnn.cli import main
seen = {}
for argv in json.loads(sys.argv[1]):
    sys.argv = ["charrnn", *argv]
    try:
        main()
    except SystemExit as e:
        assert not e.code, f"charrnn {' '.join(argv)} exited {e.code}"
    seen[" ".join(argv)] = sorted(m for m in ("torch", "numpy", "safetensors") if m in sys.modules)
print(json.dumps(seen))
"""


def test_help_corpus_list_plot_and_cache_list_do_not_import_torch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 10, "train_loss": 2.5}\n{"step": 20, "train_loss": 2.1, "val_loss": 2.2}\n'
    )
    commands = [["--help"], ["corpus", "list"], ["corpus", "list", "--json"], ["plot", str(run)], ["cache", "list"]]
    env = {**os.environ, "CHARRNN_THREADS": "1"}  # set for every command, applied only where torch runs
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen == {" ".join(c): [] for c in commands}
