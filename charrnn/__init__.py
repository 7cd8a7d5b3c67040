"""charrnn: character-level LSTM/GRU/RNN language models from the command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("charrnn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from charrnn.errors import CharRNNError  # noqa: E402

__all__ = ["CharRNNError", "__version__"]
