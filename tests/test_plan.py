"""The automatic settings as a pure function: device, budget and amount of text in, settings out."""

from charrnn.config import PRESETS
from charrnn.plan import SMALL_TEXT, choose, named


def test_a_small_text_read_many_times_gets_a_more_regularised_model():
    choice = choose("cpu", 180, 90_000)  # the 100 KB manual for three minutes: ~60 passes
    assert choice.passes > 50
    assert all(choice.settings[k] == v for k, v in SMALL_TEXT.items())
    assert choice.settings["dropout"] > PRESETS["small"]["dropout"]
    assert choice.settings["weight_decay"] > PRESETS["small"]["weight_decay"]
    assert "passes over a small text" in choice.describe()


def test_a_large_text_read_less_than_once_gets_capacity_and_no_dropout():
    choice = choose("cpu", 180, 8_500_000)  # 9.5 MB of documentation for three minutes
    assert choice.passes < 1 and choice.settings["dropout"] == 0
    assert choice.settings["hidden_size"] == PRESETS["small"]["hidden_size"]
    assert "no dropout" in choice.describe()


def test_tiny_shakespeare_keeps_the_measured_presets():
    # the settings the README's budget table was measured with stay as they are
    assert choose("cpu", 75, 1_003_854).settings == PRESETS["small"]
    assert choose("cpu", 600, 1_003_854).settings == PRESETS["medium"]


def test_named_presets_and_other_devices_are_not_adjusted():
    assert named("small").settings == PRESETS["small"] and named("small").describe() == "preset small (as asked)"
    assert choose("cuda", 180, 90_000).settings == PRESETS["large"]
    assert choose("cpu", None, 90_000).settings == PRESETS["small"]  # a step budget: passes unknown
