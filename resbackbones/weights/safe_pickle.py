"""Read Detectron2 ``.pkl`` weight files without running code from them.

A pickle can import and call anything (detectron2#2890). Detectron2-format weight files only
hold plain containers of numpy arrays, so this unpickler admits exactly the globals numpy needs
to rebuild arrays and refuses everything else, naming what the file tried to import.
"""
from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO, FrozenSet, Tuple

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "safe_load_pickle", "ALLOWED_GLOBALS"]

# (module, name) pairs numpy's pickles use; numpy 2 moved numpy.core to numpy._core.
ALLOWED_GLOBALS: FrozenSet[Tuple[str, str]] = frozenset(
    [(core, name)
     for core in ("numpy.core.multiarray", "numpy._core.multiarray")
     for name in ("_reconstruct", "scalar")]
    + [(core, "_frombuffer") for core in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")]
)


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle asks for a global that weight files never need."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, dtypes and plain containers."""

    def __init__(self, file: BinaryIO, source: str = "<pickle>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"Refusing to load {self._source}: it tries to import '{module}.{name}', but weight "
            "pickles may only contain numpy arrays and plain containers. If you trust the file, "
            "convert it to .safetensors on a machine where running its code is acceptable."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"Refusing to load {self._source}: it uses persistent ids "
                                "(a torch zip checkpoint?); give it a .pth extension instead.")


def safe_load_pickle(path: str) -> Any:
    """Load a ``.pkl`` weight file with :class:`RestrictedUnpickler`.

    Args:
        path: file to read.

    Returns:
        The unpickled object (dicts/lists of numpy arrays, numbers and strings).

    Raises:
        UnsafePickleError: the file asks for anything else; nothing of it was executed.
    """
    with open(path, "rb") as f:
        data = f.read()
    # latin1 reads the Python 2 pickles of older Detectron2/Caffe2 weight files.
    return RestrictedUnpickler(io.BytesIO(data), source=path, encoding="latin1").load()
