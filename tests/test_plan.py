"""The automatic settings as a pure function: device, budget and amount of text in, settings out."""

from charrnn.config import PRESETS
from charrnn.plan import LARGE_TEXT, SMALL_TEXT, choose, named


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


def test_the_first_line_says_when_a_flag_replaces_what_auto_chose(tmp_path):
    """auto picks a 1 x 256 model for a text the budget cannot read twice; --hidden-size 512 is the
    small preset's own size, and the line must not then say "a smaller, faster model" alone."""
    from conftest import generated_text, run_here

    text = tmp_path / "large.txt"
    text.write_text(generated_text(300_000), encoding="utf-8")  # more than 5 s can read 1.5 times
    args = ["--max-time", "5", "--max-steps", "1", "--sample-length", "0", "-o", str(tmp_path / "r")]
    first = run_here("train", str(text), "--hidden-size", "512", *args, check=True).stderr.decode().splitlines()[0]
    assert "so a smaller, faster model" in first and "--hidden-size 512 given (auto: 256)" in first
