"""Read PyTorch checkpoints into NumPy arrays, without torch and without running code.

Both layouts ``torch.save`` has written are read: the legacy one (consecutive pickles,
then each storage's raw bytes) and the zip one (``data.pkl`` plus one file per
storage). Unpickling is restricted to the handful of globals a state dict needs; any
other global (``os.system``, ``builtins.eval``, ...) is refused with a
:class:`WeightsError`, so a crafted file cannot execute anything.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tftoolkit.errors import WeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


@dataclass
class _Storage:
    dtype: Any
    key: str
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self, source: str, name: str) -> np.ndarray:
        """The tensor as a NumPy array, after checking that the file's offset, size and
        stride stay inside its storage (a crafted file could read other memory)."""
        flat = self.storage.data
        if flat is None:
            raise WeightsError(f"{source}: tensor {name!r} uses storage {self.storage.key}, "
                               "whose data the file does not hold: it is damaged or crafted")
        self._check_bounds(len(flat), source, name)
        if not self.size:
            return flat[self.offset].copy()
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=tuple(s * itemsize for s in self.stride))
        return np.array(view)

    def _check_bounds(self, elements: int, source: str, name: str) -> None:
        where = f"{source}: tensor {name!r} (storage {self.storage.key})"
        values = (self.offset, *self.size, *self.stride)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise WeightsError(f"{where} has a non-integer offset, size or stride "
                               f"{self.offset!r}, {self.size!r}, {self.stride!r}: the file "
                               "is damaged or crafted")
        if len(self.stride) != len(self.size) or min(values) < 0:
            raise WeightsError(f"{where} has size {self.size} and stride {self.stride} "
                               f"at offset {self.offset}: negative or mismatched; the file "
                               "is damaged or crafted")
        if 0 in self.size:
            return
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= elements:
            raise WeightsError(f"{where} reads element {last} (offset {self.offset}, size "
                               f"{self.size}, stride {self.stride}) of a storage of "
                               f"{elements} elements: the file is damaged or crafted; "
                               "nothing was read")


class _StorageType:
    def __init__(self, name: str):
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise WeightsError(f"a tensor is rebuilt from {type(storage).__name__}, not from a "
                           "storage of the file: the file is damaged or crafted")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict needs; refuses every other."""

    def __init__(self, file: BinaryIO, source: str, storages: dict[str, _Storage]):
        super().__init__(file)
        self._source = source
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"refusing to read {self._source}: it asks to load the Python global "
            f"{module}.{name}, which a weights file never needs (a crafted checkpoint could "
            "run code this way). Only plain tensor state dicts are accepted.")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsError(f"{self._source}: unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self._source}: unsupported storage type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, key, numel)
        return self._storages[key]


def _materialize(obj: Any, source: str, name: str = "") -> Any:
    if isinstance(obj, _TensorRef):
        return obj.to_numpy(source, name)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v, source, f"{name}.{k}".lstrip(".")))
                         for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, source, f"{name}[{i}]") for i, v in enumerate(obj))
    return obj


def _read_legacy(f: BinaryIO, source: str) -> Any:
    storages: dict[str, _Storage] = {}

    def load() -> Any:
        return _RestrictedUnpickler(f, source, storages).load()

    if load() != LEGACY_MAGIC:
        raise WeightsError(f"{source} is not a PyTorch checkpoint (bad magic number)")
    load()  # protocol version
    load()  # sys info
    state = load()
    keys = load()
    for key in keys:
        storage = storages[str(key)]
        count = int(np.frombuffer(f.read(8), "<i8")[0])
        nbytes = count * np.dtype(storage.dtype).itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise WeightsError(f"{source} is truncated (storage {key})")
        storage.data = np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    return _materialize(state, source)


def _read_zip(path: Path, source: str) -> Any:
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise WeightsError(f"{source}: zip checkpoint without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        state = _RestrictedUnpickler(io.BytesIO(archive.read(pkl)), source, storages).load()
        for key, storage in storages.items():
            storage.data = np.frombuffer(archive.read(f"{prefix}data/{key}"),
                                         dtype=np.dtype(storage.dtype).newbyteorder("<"))
    return _materialize(state, source)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The ``name -> array`` state dict stored in a PyTorch checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            state = _read_zip(path, str(path))
        else:
            with open(path, "rb") as f:
                state = _read_legacy(f, str(path))
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)
