"""The automatic settings as a pure function: device, budget and amount of text in, settings out."""

from charrnn.config import PRESETS
from charrnn.training.plan import LARGE_TEXT, SMALL_TEXT, choose, named


def test_a_small_text_read_many_times_gets_a_more_regularised_model():
    choice = choose("cpu", 180, 90_000)  # the 100 KB manual for three minutes: ~60 passes
    assert choice.passes > 50
    assert all(choice.settings[k] == v for k, v in SMALL_TEXT.items())
    assert choice.settings["dropout"] > PRESETS["small"]["dropout"]
    assert choice.settings["weight_decay"] > PRESETS["small"]["weight_decay"]
    assert "passes over a small text" in choice.describe()


def test_a_text_the_budget_cannot_read_twice_gets_a_faster_model():
    choice = choose("cpu", 180, 8_500_000)  # 9.5 MB of documentation for three minutes
    assert choice.passes < 1
    assert choice.settings == {**PRESETS["small"], **LARGE_TEXT}
    assert choice.settings["hidden_size"] < PRESETS["small"]["hidden_size"] and choice.settings["dropout"] == 0
    assert "passes over a large text, so a smaller, faster model" in choice.describe()
    # ten minutes: medium would read it about once, and steps still decide
    assert choose("cpu", 600, 8_500_000).settings == {**PRESETS["small"], **LARGE_TEXT}
    assert choose("cpu", 180, 1_003_854).settings == PRESETS["small"]  # tiny-shakespeare: five passes


def test_a_medium_sized_text_gets_capacity_as_soon_as_the_budget_pays_for_it():
    choice = choose("cpu", 600, 3_000_000)  # 3 MB for ten minutes: medium reads it about 3 times
    assert choice.preset == "medium" and choice.settings == PRESETS["medium"]
    assert choose("cpu", 600, 90_000).preset == "small"  # the same budget on a small text: one layer
    assert choose("cpu", 180, 1_500_000).settings == PRESETS["small"]  # 3 minutes: medium learns too slowly


def test_tiny_shakespeare_keeps_the_measured_presets():
    # the settings the README's budget table was measured with stay as they are
    assert choose("cpu", 75, 1_003_854).settings == PRESETS["small"]
    assert choose("cpu", 600, 1_003_854).settings == PRESETS["medium"]


def test_named_presets_and_other_devices_are_not_adjusted():
    assert named("small").settings == PRESETS["small"] and named("small").describe() == "preset small (as asked)"
    assert choose("cuda", 180, 90_000).settings == PRESETS["large"]
    assert choose("cpu", None, 90_000).settings == PRESETS["small"]  # a step budget: passes unknown


def test_a_gpu_chooses_from_the_speed_it_measured():
    """On an H200 `medium` trained at about 85,000 characters a second: tiny-shakespeare in two
    minutes (10 passes) keeps `medium`, which beat `large` there; vim-docs (1.2 passes) gets
    `large`'s batches, which beat `medium` there. From 20 passes the small-text regularisation.
    Without a measurement (MPS, several GPUs, a step budget) the large preset stays as it was."""
    shakespeare = choose("cuda", 120, 1_003_854, speed=85_000)
    assert shakespeare.settings == PRESETS["medium"] and round(shakespeare.passes) == 10
    assert shakespeare.describe().startswith("preset medium (a CUDA GPU, a 2-minute budget")
    vim_docs = choose("cuda", 120, 8_567_606, speed=85_000)
    assert vim_docs.settings == PRESETS["large"] and round(vim_docs.passes, 1) == 1.2
    assert "1.2 passes over a large text at medium's speed (about 85,000 characters a second here)" in vim_docs.why
    # the thresholds: 4 passes for medium, 20 for its regularisation
    assert choose("cuda", 100, 100_000, speed=3_999).preset == "large"
    assert choose("cuda", 100, 100_000, speed=4_000).settings == PRESETS["medium"]
    assert choose("cuda", 100, 100_000, speed=19_999).settings == PRESETS["medium"]
    assert choose("cuda", 100, 100_000, speed=20_000).settings == {**PRESETS["medium"], **SMALL_TEXT}
    assert choose("cuda", 120, 1_003_854).settings == PRESETS["large"]
    assert choose("mps", 120, 1_003_854).describe() == "preset large (an MPS device; its speed not measured)"
    assert choose("cuda", None, 1_003_854, speed=85_000).settings == PRESETS["large"]


def test_a_flag_that_replaces_the_reason_for_large_batches_is_named():
    from charrnn.training.request import RunRequest, plan_run, train_config

    request = RunRequest(settings={"max_time": 120.0, "batch_size": 16})
    planned = plan_run(request, train_config(request), vocab_size=1452, train_chars=8_567_606,
                       device_type="cuda", speed=85_000)  # fmt: skip
    assert planned.train.batch_size == 16 and planned.preset == "large"
    assert planned.why.endswith("so larger batches); --batch-size 16 given (auto: 64)")


def test_a_timed_auto_run_on_a_gpu_measures_medium(tmp_path, monkeypatch):
    import numpy as np
    import torch

    import charrnn.training.session
    import charrnn.training.speed
    from charrnn.config import TrainConfig
    from charrnn.training.distributed import Dist
    from charrnn.training.request import RunRequest

    measured = []
    monkeypatch.setattr(charrnn.training.speed, "training_speed", lambda model, config, ids, device: measured.append(
        (model.layers, config.batch_size, device.type)) or 85_000.0)  # fmt: skip
    monkeypatch.setattr(charrnn.training.session, "_check_memory", lambda model, device: None)
    request, ids = RunRequest(settings={"max_time": 120.0}), np.zeros(100_000, dtype=np.uint8)

    def speed(world):
        dist = Dist(rank=0, world=world)
        return charrnn.training.session.measure_speed(
            request, TrainConfig(max_time=120.0), 65, ids, torch.device("cuda"), dist, True
        )

    assert speed(1) == 85_000.0 and measured == [(2, PRESETS["medium"]["batch_size"], "cuda")]
    assert speed(2) is None and len(measured) == 1  # several GPUs: not measured, the large preset


def test_the_first_line_says_when_a_flag_replaces_what_auto_chose(tmp_path):
    """auto picks a 1 x 256 model for a text the budget cannot read twice; --hidden-size 512 is the
    small preset's own size, and the line must not then say "a smaller, faster model" alone."""
    from conftest import generated_text, run_here

    text = tmp_path / "large.txt"
    text.write_text(generated_text(300_000), encoding="utf-8")  # more than 5 s can read 1.5 times
    args = ["--max-time", "5", "--max-steps", "1", "--sample-length", "0", "-o", str(tmp_path / "r")]
    first = run_here("train", str(text), "--hidden-size", "512", *args, check=True).stderr.decode().splitlines()[0]
    assert "so a smaller, faster model" in first and "--hidden-size 512 given (auto: 256)" in first


def test_the_passes_come_from_the_speed_measured_here():
    """A busy core or --threads 1 trains several times slower than the table's 2-core figure: a
    text that looks small at the table's speed is read only a couple of times, and gets neither
    the small-text regularisation nor, read less than 1.5 times, the small preset's wide model."""
    assert choose("cpu", 60, 200_000).settings == {**PRESETS["small"], **SMALL_TEXT}  # the table: 9 passes
    measured = choose("cpu", 60, 200_000, speed=7_000)  # what one busy core did: 2.1 passes
    assert measured.settings == PRESETS["small"] and round(measured.passes, 1) == 2.1
    assert "about 2.1 passes over the text (about 7,000 characters a second here)" in measured.describe()
    assert choose("cpu", 60, 1_080_000, speed=7_000).settings == {**PRESETS["small"], **LARGE_TEXT}


def test_a_timed_auto_run_measures_its_speed_first(tmp_path, monkeypatch):
    from conftest import TINY, generated_text, run_here

    import charrnn.training.speed

    measured = []

    def speed(model, config, train_ids, device):
        measured.append((model.hidden_size, config.batch_size))
        return 1_000.0

    monkeypatch.setattr(charrnn.training.speed, "training_speed", speed)
    text = tmp_path / "text.txt"
    text.write_text(generated_text(20_000), encoding="utf-8")
    args = ["--max-time", "5", "--max-steps", "1", "--sample-length", "0"]
    first = run_here("train", str(text), *args, "-o", str(tmp_path / "a"), check=True).stderr.decode().splitlines()[0]
    assert measured == [(PRESETS["small"]["hidden_size"], PRESETS["small"]["batch_size"])]
    assert "about 0.3 passes over a large text (about 1,000 characters a second here)" in first
    # flags that size the model are what is measured; a named preset and a step budget measure nothing
    run_here("train", str(text), *TINY, *args, "-o", str(tmp_path / "b"), check=True)
    assert measured[1] == (32, 8)
    run_here("train", str(text), "--preset", "small", *args, "-o", str(tmp_path / "c"), check=True)
    run_here("train", str(text), "--max-steps", "1", "--sample-length", "0", "-o", str(tmp_path / "d"), check=True)
    assert len(measured) == 2


def test_measuring_the_speed_trains_a_throwaway_model_and_leaves_the_random_state(tmp_path):
    import numpy as np
    import torch

    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.training.speed import training_speed

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    ids = np.arange(5_000, dtype=np.uint8) % 40
    torch.set_num_threads(2)  # it tries one thread too, and gives the run back all it had
    try:
        speed = training_speed(ModelConfig(40, hidden_size=32, embedding_size=8), TrainConfig(batch_size=4, seq_len=16),
                               ids, torch.device("cpu"))  # fmt: skip
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert speed > 1_000 and torch.rand(3).equal(expected)
