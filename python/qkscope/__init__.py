"""qkscope's outputs for notebooks: `qkscope.open(path)` (h5py and numpy only); see reader.py."""
from .reader import Example, Head, Metrics, Pair, Run, Static, StaticHead, attr, open  # noqa: F401
from .vocab import Vocab  # noqa: F401

__version__ = "0.1.0"
