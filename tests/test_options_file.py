"""`charrnn train --config run.toml` and `charrnn info RUN --config`: settings kept in a file."""

from __future__ import annotations

import json

from conftest import generated_text, run_here


def test_a_config_file_trains_flags_override_it_and_info_writes_one_that_trains_the_run_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "poem.txt").write_text(generated_text(6_000), encoding="utf-8")
    (tmp_path / "run.toml").write_text(
        'corpus = ["poem.txt"]\nout = "runs/a"\ncell = "gru"\nhidden-size = 32\nembedding-size = 8\n'
        "batch-size = 8\nseq-len = 32\nmax-steps = 6\nsample-length = 0\nquiet = true\n",
        encoding="utf-8",
    )
    run_here("train", "--config", "run.toml", "--max-steps", "4", check=True)  # the flag wins over the file
    first = json.loads((tmp_path / "runs/a/run.json").read_text())
    assert first["model"]["cell"] == "gru" and first["model"]["hidden_size"] == 32
    assert first["train"]["max_steps"] == 4 and first["train"]["batch_size"] == 8

    written = run_here("info", "runs/a", "--config", check=True).stdout.decode()
    (tmp_path / "again.toml").write_text(written, encoding="utf-8")
    run_here("train", "--config", "again.toml", "-o", "runs/b", "-q", "--sample-length", "0", check=True)
    second = json.loads((tmp_path / "runs/b/run.json").read_text())
    different = {k for k in first if first[k] != second[k]} - {"why"}  # why: "as asked" for a named preset
    assert different == set(), different


def test_a_config_file_with_an_unknown_key_or_a_bad_value_is_one_line_naming_both(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, expected in [
        ("hiden-size = 64\n", "unknown option 'hiden-size'"),
        ('hidden-size = "big"\n', "hidden-size = \"big\": Invalid value for '--hidden-size'"),
        ("layers = 0\n", "layers = 0: Invalid value for '--layers'"),
        ('cell = "lstmm"\n', 'cell = "lstmm"'),
        ("layers = [\n", "not valid TOML"),
    ]:
        bad.write_text(text, encoding="utf-8")
        proc = run_here("train", "--config", str(bad))
        err = proc.stderr.decode()
        assert proc.returncode in (1, 2) and f"{bad}: " in err and expected in err and "Traceback" not in err, err
