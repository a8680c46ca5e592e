"""Read ``torch.save`` checkpoints without PyTorch and without running code from the file.

Why this module exists
----------------------
A ``.pth`` file is a pickle, and unpickling is a small stack machine: its
``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` opcodes import *any* attribute of *any*
module and ``REDUCE`` calls it with arguments from the file.  ``pickle.load``
(or ``torch.load(weights_only=False)``) on a downloaded checkpoint therefore
lets whoever wrote the file run commands on your machine, e.g.
``os.system('...')``.

This reader never imports or calls what a pickle names.  Every global lookup
goes through :meth:`_Unpickler.find_class`, which answers from a short explicit
allow-list (:data:`ALLOWED_GLOBALS`) of stand-ins written in this module --
``torch._utils._rebuild_tensor_v2`` becomes a function that cuts a window out of
a NumPy array, ``argparse.Namespace`` becomes :class:`types.SimpleNamespace` --
and raises :class:`UnsafeCheckpointError` for anything else, before the named
object exists, let alone runs.  The stand-ins only build NumPy arrays, tuples,
dicts and namespaces, so nothing in the file can reach code outside this
module.  Tensor bytes never pass through pickle at all: they sit in raw storage
records that are read as plain bytes, lazily, when a tensor refers to them.

Supported input
---------------
* zip format (``torch.save`` since torch 1.6): one top folder holding
  ``data.pkl``, ``data/<key>`` raw storages and ``byteorder`` (``little`` is
  assumed when that record is missing, as torch does).
* legacy format (before 1.6): pickled magic number, protocol version and
  sys-info, the main pickle, a pickled list of storage keys, then every storage
  as an int64 element count followed by its raw bytes (always little-endian:
  torch converts on write).

Every tensor or ``nn.Parameter`` becomes a C-contiguous ``numpy.ndarray`` copy
of exactly its own window (shape, strides and storage offset honoured, so views
sharing one storage each read the right elements).  Element types: float64,
float32, float16, bfloat16, int64, int32, int16, int8, uint8 and bool.

bfloat16: NumPy has no such type.  Tensors keep their type as
``ml_dtypes.bfloat16`` (ml_dtypes is installed with JAX, which consumes it
directly); only if ml_dtypes cannot be imported are they widened to float32,
which is exact.
"""

from __future__ import annotations

import collections
import errno
import io
import os
import pickle
import types
import zipfile

import numpy as np

try:
  import ml_dtypes

  _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes ships with jax
  _BFLOAT16 = None

__all__ = [
    "ALLOWED_GLOBALS",
    "CheckpointError",
    "UnsafeCheckpointError",
    "load_torch_checkpoint",
]


class CheckpointError(ValueError):
  """The file is not a readable ``torch.save`` checkpoint (corrupt, truncated, other format)."""


class UnsafeCheckpointError(CheckpointError):
  """The pickle names a global outside the allow-list; nothing from the file was executed."""


# Bytes per element of each supported element type (named as in torch).
_ITEMSIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


class _DtypeTag:
  """Stand-in for a torch storage class (``torch.FloatStorage``) or dtype
  (``torch.float32``).  It only carries the element type's name and cannot be
  called, so a pickle gains nothing by reducing with it."""

  __slots__ = ("torch_name", "dtype")

  def __init__(self, torch_name: str, dtype: str):
    self.torch_name = torch_name
    self.dtype = dtype

  def __repr__(self) -> str:
    return f"<stand-in for {self.torch_name}>"


class _Storage:
  """A storage named by a persistent id.  Its bytes are fetched by ``read`` on
  first use; ``read`` is None during the metadata-only pass over a legacy file."""

  def __init__(self, where, dtype, numel, read, byteorder="little", offset=0):
    self.where = where  # "<path>: storage '<key>'", for error messages
    self.dtype = dtype
    self.numel = numel
    self.read = read
    self.byteorder = byteorder
    self.offset = offset  # in elements; only legacy storage views use it

  def elements(self, dtype: str) -> np.ndarray:
    """The storage as a flat, read-only, native-endian array of ``dtype``."""
    raw = self.read()
    start = self.offset * _ITEMSIZE[self.dtype]
    stop = start + self.numel * _ITEMSIZE[self.dtype]
    if len(raw) < stop:
      raise CheckpointError(f"{self.where} holds {len(raw)} bytes but the pickle says it has "
                            f"{self.numel} {self.dtype} elements from byte {start} ({stop} bytes needed); "
                            "the file is truncated or corrupt, fetch it again")
    size = _ITEMSIZE[dtype]
    order = "<" if self.byteorder == "little" else ">"
    # Read as unsigned words of the right width, fix the byte order, then
    # reinterpret: one code path for every element type, bfloat16 included.
    words = np.frombuffer(raw, dtype=f"{order}u{size}", count=(stop - start) // size, offset=start)
    words = words.astype(f"=u{size}", copy=False)
    if dtype != "bfloat16":
      return words.view(np.dtype(dtype))
    if _BFLOAT16 is not None:
      return words.view(_BFLOAT16)
    return (words.astype(np.uint32) << 16).view(np.float32)


# Largest broadcast (stride-0) view copied out when it holds more elements than its storage.
_MAX_BROADCAST = 1 << 24


def _is_index(x) -> bool:
  return type(x) is int and x >= 0


def _tensor(storage, storage_offset, size, stride, dtype=None):
  """Copy out the window ``storage[storage_offset + sum(i_k * stride_k)]``."""
  if not isinstance(storage, _Storage):
    raise TypeError(f"tensor rebuilt from {type(storage).__name__}, not from a storage")
  size, stride = tuple(size), tuple(stride)
  if not (_is_index(storage_offset) and len(size) == len(stride) and all(map(_is_index, size + stride))):
    raise CheckpointError(f"{storage.where}: invalid tensor geometry (offset {storage_offset!r}, "
                          f"size {size!r}, stride {stride!r}); the file is corrupt")
  if storage.read is None:  # legacy metadata pass: nothing to build yet
    return None
  flat = storage.elements(dtype or storage.dtype)
  count = int(np.prod(size, dtype=object))
  if count > max(flat.size, _MAX_BROADCAST):
    # Only self-overlapping views (stride 0, i.e. expand()) hold more elements than
    # their storage; copying a huge one would let a tiny file exhaust memory.
    raise CheckpointError(f"{storage.where}: a tensor of shape {size} (strides {stride}) would expand "
                          f"{flat.size} stored elements into {count}; refusing, the file is corrupt")
  if count == 0:
    return np.zeros(size, flat.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise CheckpointError(f"{storage.where}: a tensor of shape {size} (strides {stride}, offset "
                          f"{storage_offset}) reaches element {last} but the storage has only "
                          f"{flat.size}; the file is truncated or corrupt")
  window = np.lib.stride_tricks.as_strided(
      flat[storage_offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride), writeable=False)
  return np.array(window, order="C")  # always a fresh, writeable copy


# --- stand-ins for the allowed globals -------------------------------------------------


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
  return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
  if not isinstance(dtype, _DtypeTag):
    raise TypeError(f"tensor dtype is {dtype!r}, not a torch dtype")
  return _tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
  return data  # an nn.Parameter is just its tensor here


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  return data


def _torch_size(dims=()):
  return tuple(dims)


_STORAGE_CLASSES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_TORCH_DTYPES = {  # attribute of the torch module -> element type
    **{name: name for name in _ITEMSIZE},
    "float": "float32", "double": "float64", "half": "float16",
    "long": "int64", "int": "int32", "short": "int16",
}

# (module, name) as written in the pickle -> the object handed to the unpickler.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): types.SimpleNamespace,
    ("torch", "Size"): _torch_size,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "UntypedStorage"): _DtypeTag("torch.UntypedStorage", "uint8"),
    ("torch.storage", "UntypedStorage"): _DtypeTag("torch.storage.UntypedStorage", "uint8"),
    **{
        ("torch", cls): _DtypeTag(f"torch.{cls}", dt) for cls, dt in _STORAGE_CLASSES.items()
    },
    **{
        ("torch", name): _DtypeTag(f"torch.{name}", dt) for name, dt in _TORCH_DTYPES.items()
    },
}

#: Every global a checkpoint may name, as ``"module.name"``.  All others are refused.
ALLOWED_GLOBALS = frozenset(f"{module}.{name}" for module, name in _ALLOWED)


class _Unpickler(pickle.Unpickler):
  """Unpickler whose only globals are the stand-ins above and whose persistent
  ids must be storage references, resolved by ``load_storage``."""

  def __init__(self, file, path, load_storage):
    super().__init__(file, encoding="utf-8")
    self._path = path
    self._load_storage = load_storage

  def find_class(self, module, name):
    try:
      return _ALLOWED[module, name]
    except KeyError:
      raise UnsafeCheckpointError(f"{self._path}: refused to load: the pickle references the global "
                                  f"'{module}.{name}', which is not on this reader's allow-list. The file "
                                  "was not executed and nothing it names was imported or called. A checkpoint "
                                  "of weights never needs it; treat the file as untrusted or malicious.") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and isinstance(pid[1], _DtypeTag) and
            isinstance(pid[2], str) and _is_index(pid[4])) or self._load_storage is None:
      raise CheckpointError(f"{self._path}: unexpected persistent id {pid!r:.200}; this reader only "
                            "understands ('storage', <storage type>, key, location, numel) references")
    storage_type, key, _location, numel, *view = pid[1:]
    return self._load_storage(storage_type.dtype, key, numel, view[0] if view else None)


def _unpickle(file, path, what, load_storage):
  try:
    return _Unpickler(file, path, load_storage).load()
  except CheckpointError:
    raise
  except Exception as e:  # a malformed pickle can fail in many ways; all mean "corrupt"
    raise CheckpointError(f"{path}: could not unpickle {what} ({type(e).__name__}: {e}). The file is "
                          "truncated, corrupt or not a torch.save checkpoint; fetch it again.") from e


def _load_zip(path, zf: zipfile.ZipFile):
  names = zf.namelist()
  pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pickles) != 1:
    raise CheckpointError(f"{path}: zip archive with {len(pickles)} '<folder>/data.pkl' records instead "
                          f"of one (members start {names[:5]}); it is not a torch.save checkpoint")
  top = pickles[0][:-len("data.pkl")]
  if top + "constants.pkl" in names or any(n.startswith(top + "code/") for n in names):
    raise CheckpointError(f"{path}: this is a TorchScript archive (torch.jit.save), which is not "
                          "supported; export the weights with torch.save(model.state_dict(), ...)")
  byteorder = "little"
  if top + "byteorder" in names:
    byteorder = zf.read(top + "byteorder").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
      raise CheckpointError(f"{path}: unknown byteorder record {byteorder!r}")

  cache = {}

  def read(member):
    if member not in cache:
      try:
        cache[member] = zf.read(member)
      except KeyError:
        raise CheckpointError(f"{path}: the pickle references {member!r}, which is missing from "
                              "the archive; the file is incomplete, fetch it again") from None
    return cache[member]

  def load_storage(dtype, key, numel, view):
    if view is not None:
      raise CheckpointError(f"{path}: storage view {view!r} in a zip checkpoint")
    member = f"{top}data/{key}"
    return _Storage(f"{path}: storage {member!r}", dtype, numel, lambda: read(member), byteorder)

  return _unpickle(io.BytesIO(zf.read(pickles[0])), path, pickles[0], load_storage)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _load_legacy(path, f):
  magic = None
  if f.read(1) == b"\x80":  # torch always pickles with protocol >= 2, i.e. PROTO first
    f.seek(0)
    try:
      magic = _unpickle(f, path, "the magic number", None)
    except UnsafeCheckpointError:
      raise
    except CheckpointError:
      pass
  if type(magic) is not int or magic != _LEGACY_MAGIC:
    raise CheckpointError(f"{path}: not a PyTorch checkpoint: it is neither a zip archive (torch.save "
                          "since 1.6) nor a legacy torch.save file. Check that the path points at the "
                          ".pth / .pth.tar file itself and that the download completed.")
  protocol = _unpickle(f, path, "the protocol version", None)
  if protocol != _LEGACY_PROTOCOL:
    raise CheckpointError(f"{path}: legacy torch.save file with unsupported protocol "
                          f"version {protocol!r} (expected {_LEGACY_PROTOCOL})")
  _unpickle(f, path, "sys_info", None)  # byte order is irrelevant: storages are little-endian
  main = f.tell()

  # Pass 1: the storages follow the main pickle, and reading them needs each one's
  # element size, which only the pickle's persistent ids tell.  Collect those (the
  # tensor stand-ins return None while ``read`` is None) ...
  dtypes = {}

  def record(dtype, key, numel, view):
    dtypes.setdefault(key, dtype)
    return _Storage(f"{path}: storage {key!r}", dtype, numel, None)

  _unpickle(f, path, "the main pickle", record)
  keys = _unpickle(f, path, "the storage key list", None)
  if not (isinstance(keys, list) and all(k in dtypes for k in keys)):
    raise CheckpointError(f"{path}: storage key list does not match the pickle")
  raw = {}
  remaining = os.fstat(f.fileno()).st_size - f.tell()
  for key in keys:
    head = f.read(8)
    numel = int.from_bytes(head, "little", signed=True)
    nbytes = numel * _ITEMSIZE[dtypes[key]]
    remaining -= len(head) + max(nbytes, 0)
    if len(head) < 8 or numel < 0 or remaining < 0:
      raise CheckpointError(f"{path}: storage {key!r} is cut short; the file is "
                            "truncated, fetch it again")
    raw[key] = f.read(nbytes)

  # ... pass 2: unpickle again, now with every storage's bytes at hand.
  def load_storage(dtype, key, numel, view):
    if key not in raw:
      raise CheckpointError(f"{path}: storage {key!r} has no data in the file")
    if view is None:
      return _Storage(f"{path}: storage {key!r}", dtype, numel, lambda: raw[key])
    view_key, offset, view_numel = view
    if not (_is_index(offset) and _is_index(view_numel)):
      raise CheckpointError(f"{path}: invalid storage view {view!r}")
    return _Storage(f"{path}: storage {key!r} (view {view_key!r})", dtype, view_numel, lambda: raw[key], offset=offset)

  f.seek(main)
  return _unpickle(f, path, "the main pickle", load_storage)


def load_torch_checkpoint(path: str | os.PathLike) -> object:
  """Load a ``torch.save`` file with every tensor as a ``numpy.ndarray``.

  Dicts, lists, tuples, numbers and strings come back as themselves,
  ``collections.OrderedDict`` (e.g. state dicts) keeps its order,
  ``argparse.Namespace`` becomes ``types.SimpleNamespace`` and ``torch.Size``
  a tuple.  Raises ``FileNotFoundError`` for a missing file,
  :class:`UnsafeCheckpointError` if the pickle names any global outside
  :data:`ALLOWED_GLOBALS` and :class:`CheckpointError` for anything else that
  makes the file unreadable.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(errno.ENOENT, f"no checkpoint file at {path!r}", path)
  with open(path, "rb") as f:
    head = f.read(4)
    if not head:
      raise CheckpointError(f"{path}: the file is empty (0 bytes); the download or "
                            "copy failed, fetch it again")
    f.seek(0)
    if not zipfile.is_zipfile(f):
      if head == b"PK\x03\x04":
        raise CheckpointError(f"{path}: starts like a zip archive but its central directory is "
                              "missing: the file is truncated or corrupt, fetch it again")
      f.seek(0)
      return _load_legacy(path, f)
    try:
      with zipfile.ZipFile(f) as zf:
        return _load_zip(path, zf)
    except CheckpointError:
      raise
    except Exception as e:  # BadZipFile, zlib.error, EOFError, bad CRC ...
      raise CheckpointError(f"{path}: corrupt zip archive ({type(e).__name__}: {e}); "
                            "fetch the file again") from e
