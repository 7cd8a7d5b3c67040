"""charrnn: character-level LSTM/GRU/RNN language models from the command line and from Python.

    import charrnn
    model = charrnn.load("runs/shakespeare")    # the run's best checkpoint
    text = model.sample("ROMEO:", length=200, temperature=0.8, seed=1)  # the continuation, a str
    result = charrnn.train("poems.txt", out="runs/poems", max_time="5m")

`import charrnn` is light: torch and the model code are imported only when one of the names in
`_LAZY` is first used (`charrnn.load`, ...), so a program, or `charrnn --help`, starts at once.
"""

from importlib import import_module

from charrnn.errors import CharRNNError, CheckpointError, InputError, UsageError  # noqa: E402

# Public names that need torch: each is imported from its module on first use.
_LAZY = {
    "load": "charrnn.api",
    "Model": "charrnn.api",
    "Info": "charrnn.records",
    "Score": "charrnn.records",
    "train": "charrnn.api",
    "Result": "charrnn.records",
}

__all__ = ["CharRNNError", "CheckpointError", "InputError", "UsageError", "__version__", *_LAZY]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # a tenth of `charrnn --help`'s start-up

    try:
        return version("charrnn")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name not in _LAZY:
        raise AttributeError(f"module 'charrnn' has no attribute '{name}'")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
