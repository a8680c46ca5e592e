"""Tests for cast_jax.torch_pickle: the golden checkpoints, hand-built torch-format
files, malicious pickles (never unpickled by the standard module) and broken files."""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import struct
import sys
import types
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import cast_jax.torch_pickle as tp
from cast_jax.torch_pickle import (
    ALLOWED_GLOBALS,
    CheckpointError,
    UnsafeCheckpointError,
    load_torch_checkpoint,
)

from conftest import (REPO_ROOT, checkpoint_path, golden_dir, golden_folder, golden_folder_params, load_meta,
                      missing_fixture, require_golden)

# The golden checkpoints are found by meta.json kind (conftest), never by folder or file name.


def spec_dir() -> Path:
  """The state-dict key lists of the full-size models: $CAST_SPEC_DIR, else 'spec' beside the golden root, else
  ../shared/spec next to the repository (a fixture set elsewhere still finds the shared spec)."""
  candidates = [Path(os.environ["CAST_SPEC_DIR"])] if "CAST_SPEC_DIR" in os.environ else []
  candidates += [golden_dir().parent / "spec", REPO_ROOT.parent / "shared" / "spec"]
  for candidate in candidates:
    if (candidate / "state_dict_keys").is_dir():
      return candidate / "state_dict_keys"
  missing_fixture(f"no state_dict_keys/ in {[str(c) for c in candidates]}: set CAST_SPEC_DIR to the spec folder")


def golden(folder: str) -> Path:
  """The checkpoint of a golden folder (a placeholder id from golden_folder_params: skip, or fail in CI)."""
  require_golden(folder)
  return checkpoint_path(folder)


def spec_keys(name: str) -> list[tuple[str, tuple]]:
  rows = [line.split("\t") for line in (spec_dir() / name).read_text().splitlines() if line]
  return [(r[0], tuple(int(d) for d in r[1].strip("()").split(",") if d.strip())) for r in rows]


def _block_pattern(key: str) -> str:
  """A state-dict key with its block index replaced ('blocks.4.x' and 'blocks2.4.x' -> 'blocks.#.x',
  'blocks2.#.x'), so that models of other depths compare by the names each block has."""
  return re.sub(r"(^|\.)(blocks\d?)\.\d+\.", r"\1\2.#.", key)


def assert_keys_follow_spec(keys: list[str], ranks: list[int], spec: list[tuple[str, tuple]], depth) -> None:
  """The checkpoint's keys against the spec's list for the full-size model: in the same order with the same ranks
  when the depths agree (the fixtures are narrower, not shallower), else the same names per block and ranks."""
  spec_names = [k for k, _ in spec]
  # cast.py names each block twice (blocks.N and blocksK.N), cast_seg.py only blocksK.N: N counts the blocks.
  spec_depth = 1 + max(int(m.group(1)) for k in spec_names for m in [re.search(r"(?:^|\.)blocks\d?\.(\d+)\.", k)] if m)
  if sum(depth) == spec_depth:
    assert keys == spec_names
    assert ranks == [len(shape) for _, shape in spec]
  else:
    assert sorted(set(map(_block_pattern, keys))) == sorted(set(map(_block_pattern, spec_names)))
    spec_rank = {_block_pattern(k): len(shape) for k, shape in spec}
    assert all(spec_rank[_block_pattern(k)] == r for k, r in zip(keys, ranks))


MOCO_FOLDERS = golden_folder_params("moco")
MODEL_FOLDERS = golden_folder_params()  # every kind this port builds (conftest.MODEL_KINDS)


# --- a tiny writer for torch-format pickles, without torch --------------------------------
# It uses the pure-Python pickler with one extra rule: a Global object is written as a
# GLOBAL opcode naming its module/name, so we can reference torch (or os.system) without
# importing anything.  Files written here are only ever read by load_torch_checkpoint.


class Global:

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # save_reduce insists on a callable; never called
    raise AssertionError("not to be called")


class Reduce:
  """Pickles as ``func(*args)`` (GLOBAL ... REDUCE), plus BUILD(state) if given."""

  def __init__(self, func: Global, *args, state=None):
    self.func, self.args, self.state = func, args, state

  def __reduce__(self):
    return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class StorageRef:
  """Pickles as the persistent id torch.save writes for a storage."""

  def __init__(self, cls: str, key: str, numel: int, *, legacy=False, view=None):
    self.pid = ("storage", Global("torch", cls), key, "cpu", numel)
    if legacy:
      self.pid += (view,)


class _Writer(pickle._Pickler):
  dispatch = pickle._Pickler.dispatch.copy()

  def _save_global_standin(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[Global] = _save_global_standin

  def persistent_id(self, obj):
    return obj.pid if isinstance(obj, StorageRef) else None


def dumps(obj) -> bytes:
  buf = io.BytesIO()
  _Writer(buf, protocol=2).dump(obj)
  return buf.getvalue()


def tensor(storage, offset, size, stride, rebuild="_rebuild_tensor_v2"):
  return Reduce(
      Global("torch._utils", rebuild), storage, offset, tuple(size), tuple(stride), False,
      Reduce(Global("collections", "OrderedDict")))


def write_zip(path, pkl: bytes, storages=None, byteorder="little", top="archive"):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{top}/data.pkl", pkl)
    if byteorder is not None:
      z.writestr(f"{top}/byteorder", byteorder)
    for key, data in (storages or {}).items():
      z.writestr(f"{top}/data/{key}", data)
    z.writestr(f"{top}/version", "3\n")
  return path


def save(tmp_path, obj, storages=None, byteorder="little", name="ckpt.pth"):
  return write_zip(tmp_path / name, dumps(obj), storages, byteorder)


# --- golden checkpoints -------------------------------------------------------------------


@pytest.fixture(scope="module")
def moco_folder():
  """A plain-CAST MoCo fixture (kind 'moco', arch without 'seg')."""
  require_golden()
  return golden_folder("moco", seg_arch=False)


@pytest.fixture(scope="module")
def moco(moco_folder):
  return load_torch_checkpoint(golden(moco_folder))


def _arrays(obj):
  if isinstance(obj, np.ndarray):
    yield obj
  elif isinstance(obj, dict):
    for v in obj.values():
      yield from _arrays(v)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      yield from _arrays(v)


def _state_dict(ckpt: dict) -> dict:
  """The model's state dict in any of the golden formats (MoCo 'state_dict', DeiT / seg 'model')."""
  return ckpt["model"] if "model" in ckpt else ckpt["state_dict"]


@pytest.mark.parametrize("folder", MODEL_FOLDERS)
def test_golden_loads_to_numpy(folder):
  ckpt = load_torch_checkpoint(golden(folder))
  arrays = list(_arrays(ckpt))
  state = _state_dict(ckpt)
  # Every entry of the state dict is an array (none left as a stand-in object), and CAST has hundreds whatever
  # its size: four pooling levels alone hold dozens.
  assert all(isinstance(v, np.ndarray) for v in state.values()) and len(state) > 50
  assert len(arrays) >= len(state)
  assert {a.dtype for a in arrays} == {np.dtype(np.float32), np.dtype(np.int64)}
  for a in arrays:
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.owndata
  assert "torch" not in sys.modules


def test_golden_moco_structure(moco, moco_folder):
  meta = load_meta(moco_folder)
  assert set(moco) == {"epoch", "arch", "state_dict", "optimizer", "scaler"}
  assert moco["arch"] == meta["arch"] and isinstance(moco["epoch"], int) and moco["epoch"] >= 0
  sd = moco["state_dict"]
  cls = sd["module.base_encoder.cls_token"]
  assert cls.shape == (1, 1, meta["embed_dim"]) and cls.dtype == np.float32
  nbt = sd["module.base_encoder.patch_embed.proj.1.num_batches_tracked"]
  assert nbt.shape == () and nbt.dtype == np.int64 and int(nbt) == 0
  assert all(v.shape == () and v.dtype == np.int64 for k, v in sd.items() if k.endswith("num_batches_tracked"))
  # The state dict has the same keys in the same order as the full-size model's (the fixture is narrower), with
  # the same ranks.
  assert_keys_follow_spec([k.removeprefix("module.") for k in sd], [v.ndim for v in sd.values()],
                          spec_keys("keys_moco_cast_small.tsv"), meta["depth"])
  assert moco["scaler"]["scale"] == 65536.0
  assert len(moco["optimizer"]["state"]) > 0 and "params" in moco["optimizer"]["param_groups"][0]


def test_golden_moco_aliased_keys_share_values(moco, moco_folder):
  sd = moco["state_dict"]
  a = sd["module.base_encoder.blocks1.0.norm1.weight"]
  b = sd["module.base_encoder.blocks.0.norm1.weight"]
  assert a.shape == (load_meta(moco_folder)["embed_dim"],) and np.array_equal(a, b)
  assert not np.shares_memory(a, b)  # each tensor is its own copy


@pytest.mark.parametrize("folder", golden_folder_params("deit"))
def test_golden_deit_args_and_optimizer(folder):
  ckpt = load_torch_checkpoint(golden(folder))
  meta = load_meta(folder)
  assert set(ckpt) == {"model", "epoch", "args", "optimizer"}
  args = ckpt["args"]
  assert isinstance(args, types.SimpleNamespace)
  # meta.json's arch is 'cast_small (cast_deit)': the DeiT --model name, then the module.
  assert (args.model, args.input_size) == (meta["arch"].split()[0], meta["model_img_size"])
  assert isinstance(args.drop_path, float) and isinstance(args.lr, float) and args.lr > 0
  model = ckpt["model"]
  assert isinstance(model, collections.OrderedDict)
  assert list(model)[:2] == ["cls_token", "pos_embed"] and model["cls_token"].shape == (1, 1, meta["embed_dim"])
  state = ckpt["optimizer"]["state"]
  first = state[0]
  assert first["step"].shape == () and first["step"].dtype == np.float32
  assert first["exp_avg"].shape == model["cls_token"].shape
  groups = ckpt["optimizer"]["param_groups"]
  assert isinstance(groups, list) and isinstance(groups[0]["betas"], tuple)


def _seg_folders() -> list[tuple[str, str]]:
  """(folder, spec key list) of every cast_seg checkpoint: kind 'seg', and kind 'moco' with a cast_seg arch."""
  pairs = [(f, "keys_cast_seg_small_pretrain.tsv") for f in golden_folder_params("seg") if not f.startswith("<")]
  pairs += [(f, "keys_moco_cast_seg_small_pretrain.tsv") for f in MOCO_FOLDERS
            if not f.startswith("<") and "seg" in load_meta(f).get("arch", "")]
  return pairs or [("<no golden seg fixtures>", "")]


@pytest.mark.parametrize("folder,spec", _seg_folders())
def test_golden_seg_keys_match_spec(folder, spec):
  ckpt = load_torch_checkpoint(golden(folder))
  sd = _state_dict(ckpt)
  keys = [k.removeprefix("module.") for k in sd]
  assert_keys_follow_spec(keys, [v.ndim for v in sd.values()], spec_keys(spec), load_meta(folder)["depth"])


@pytest.mark.parametrize("folder", golden_folder_params("seg_deit"))
def test_golden_seg_deit_is_ordered_state_dict(folder):
  model = load_torch_checkpoint(golden(folder))["model"]
  assert isinstance(model, collections.OrderedDict)
  assert any(k.startswith("block_fusion.") for k in model)


# --- hand-built files: geometry, dtypes, byte order ---------------------------------------


def test_strides_offsets_and_shared_storage(tmp_path):
  data = np.arange(24, dtype=np.float32)
  st = StorageRef("FloatStorage", "0", 24)
  obj = collections.OrderedDict([
      ("transposed", tensor(st, 0, (3, 4), (1, 3))),
      ("offset_strided", tensor(st, 5, (2, 3), (8, 2))),
      ("tail", tensor(st, 20, (4,), (1,))),
      ("scalar", tensor(st, 7, (), ())),
      ("broadcast", tensor(st, 2, (2, 3), (0, 1))),
      ("empty", tensor(st, 0, (0, 5), (5, 1))),
  ])
  out = load_torch_checkpoint(save(tmp_path, obj, {"0": data.tobytes()}))
  assert isinstance(out, collections.OrderedDict) and list(out) == list(obj)
  np.testing.assert_array_equal(out["transposed"], np.arange(12).reshape(4, 3).T)
  np.testing.assert_array_equal(out["offset_strided"], [[5, 7, 9], [13, 15, 17]])
  np.testing.assert_array_equal(out["tail"], [20, 21, 22, 23])
  assert out["scalar"].shape == () and out["scalar"] == 7
  np.testing.assert_array_equal(out["broadcast"], [[2, 3, 4], [2, 3, 4]])
  assert out["empty"].shape == (0, 5)
  for a in out.values():
    assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
  out["tail"][0] = -1  # independent copies
  assert out["transposed"][0, 0] == 0 and out["offset_strided"][0, 0] == 5


DTYPE_CASES = [
    ("FloatStorage", np.float32, [1.5, -2.25, 3e-8]),
    ("DoubleStorage", np.float64, [1.0 / 3, -1e300, 0.0]),
    ("HalfStorage", np.float16, [0.5, -65504.0, 1e-3]),
    ("LongStorage", np.int64, [2**40, -3, 7]),
    ("IntStorage", np.int32, [-(2**31), 5, 2**31 - 1]),
    ("ShortStorage", np.int16, [-300, 12, 32767]),
    ("CharStorage", np.int8, [-128, 0, 127]),
    ("ByteStorage", np.uint8, [0, 200, 255]),
    ("BoolStorage", np.bool_, [True, False, True]),
]


@pytest.mark.parametrize("byteorder", ["little", "big"])
@pytest.mark.parametrize("cls,dtype,values", DTYPE_CASES)
def test_dtypes_and_byteorder(tmp_path, byteorder, cls, dtype, values):
  want = np.array(values, dtype=dtype)
  raw = want.astype(want.dtype.newbyteorder("<" if byteorder == "little" else ">")).tobytes()
  obj = {"t": tensor(StorageRef(cls, "k", 3), 1, (2,), (1,)), "s": tensor(StorageRef(cls, "k", 3), 0, (), ())}
  out = load_torch_checkpoint(save(tmp_path, obj, {"k": raw}, byteorder))
  assert out["t"].dtype == dtype and out["t"].dtype.isnative
  np.testing.assert_array_equal(out["t"], want[1:])
  assert out["s"].shape == () and out["s"] == want[0]


BF16_VALUES = np.array([1.0, -2.5, 0.15625, 2.0**127], dtype=np.float32)  # exact in bf16


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_bfloat16_kept_as_ml_dtypes(tmp_path, byteorder):
  bits = (BF16_VALUES.view(np.uint32) >> 16).astype(np.uint16)
  raw = bits.astype(">u2" if byteorder == "big" else "<u2").tobytes()
  obj = {"w": tensor(StorageRef("BFloat16Storage", "0", 4), 0, (2, 2), (2, 1))}
  out = load_torch_checkpoint(save(tmp_path, obj, {"0": raw}, byteorder))["w"]
  assert out.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(out.astype(np.float32), BF16_VALUES.reshape(2, 2))


def test_bfloat16_without_ml_dtypes_widens_to_float32(tmp_path, monkeypatch):
  monkeypatch.setattr(tp, "_BFLOAT16", None)
  raw = (BF16_VALUES.view(np.uint32) >> 16).astype("<u2").tobytes()
  obj = {"w": tensor(StorageRef("BFloat16Storage", "0", 4), 1, (3,), (1,))}
  out = load_torch_checkpoint(save(tmp_path, obj, {"0": raw}))["w"]
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, BF16_VALUES[1:])


def test_parameters_size_namespace_and_v3(tmp_path):
  floats = np.arange(6, dtype=np.float32)
  halves = np.array([0.5, 1.5, -2.0], dtype=np.float16)
  t = tensor(StorageRef("FloatStorage", "f", 6), 0, (2, 3), (3, 1))
  obj = {
      "param":
          Reduce(Global("torch._utils", "_rebuild_parameter"), t, True, Reduce(Global("collections", "OrderedDict"))),
      "param_state":
          Reduce(
              Global("torch._utils", "_rebuild_parameter_with_state"), t, True,
              Reduce(Global("collections", "OrderedDict")), {}),
      "legacy_rebuild":
          Reduce(Global("torch._utils", "_rebuild_tensor"), StorageRef("FloatStorage", "f", 6), 4, (2,), (1,)),
      "v3":
          Reduce(
              Global("torch._utils", "_rebuild_tensor_v3"), StorageRef("UntypedStorage", "u", 6), 1, (2,), (1,), False,
              Reduce(Global("collections", "OrderedDict")), Global("torch", "float16")),
      "size":
          Reduce(Global("torch", "Size"), (2, 3)),
      "dtype":
          Global("torch", "float32"),
      "args":
          Reduce(Global("argparse", "Namespace"), state={
              "lr": 0.1,
              "arch": "cast_small"
          }),
  }
  out = load_torch_checkpoint(save(tmp_path, obj, {"f": floats.tobytes(), "u": halves.tobytes()}))
  np.testing.assert_array_equal(out["param"], floats.reshape(2, 3))
  np.testing.assert_array_equal(out["param_state"], floats.reshape(2, 3))
  np.testing.assert_array_equal(out["legacy_rebuild"], [4, 5])
  assert out["v3"].dtype == np.float16
  np.testing.assert_array_equal(out["v3"], halves[1:])
  assert out["size"] == (2, 3) and type(out["size"]) is tuple
  assert out["dtype"].dtype == "float32"
  assert out["args"] == types.SimpleNamespace(lr=0.1, arch="cast_small")


def test_storage_record_too_short(tmp_path):
  obj = {"w": tensor(StorageRef("FloatStorage", "0", 10), 0, (10,), (1,))}
  path = save(tmp_path, obj, {"0": np.zeros(5, np.float32).tobytes()})
  with pytest.raises(CheckpointError, match=r"ckpt\.pth.*archive/data/0.*20 bytes.*truncated"):
    load_torch_checkpoint(path)


def test_tensor_reaching_past_its_storage(tmp_path):
  obj = {"w": tensor(StorageRef("FloatStorage", "0", 4), 1, (2, 2), (2, 1))}
  path = save(tmp_path, obj, {"0": np.zeros(4, np.float32).tobytes()})
  with pytest.raises(CheckpointError, match="reaches element 4 but the storage has only 4"):
    load_torch_checkpoint(path)


def test_huge_broadcast_view_refused(tmp_path):
  # A 4-byte storage expanded (stride 0) to 10**12 elements must not be materialised.
  obj = {"w": tensor(StorageRef("FloatStorage", "0", 1), 0, (10**6, 10**6), (0, 0))}
  path = save(tmp_path, obj, {"0": np.zeros(1, np.float32).tobytes()})
  with pytest.raises(CheckpointError, match="would expand 1 stored elements into 1000000000000"):
    load_torch_checkpoint(path)


def test_missing_storage_record(tmp_path):
  obj = {"w": tensor(StorageRef("FloatStorage", "7", 4), 0, (4,), (1,))}
  with pytest.raises(CheckpointError, match="archive/data/7.*missing"):
    load_torch_checkpoint(save(tmp_path, obj, {}))


def test_bad_byteorder_record(tmp_path):
  with pytest.raises(CheckpointError, match="byteorder"):
    load_torch_checkpoint(save(tmp_path, {"a": 1}, byteorder="middle"))


def test_no_byteorder_record_means_little(tmp_path):
  obj = {"w": tensor(StorageRef("LongStorage", "0", 2), 0, (2,), (1,))}
  path = write_zip(tmp_path / "old.pth", dumps(obj), {"0": np.array([1, 2], "<i8").tobytes()}, byteorder=None)
  np.testing.assert_array_equal(load_torch_checkpoint(path)["w"], [1, 2])


def test_non_storage_persistent_id_refused(tmp_path):
  odd = StorageRef("FloatStorage", "0", 1)
  odd.pid = ("module", "whatever")
  with pytest.raises(CheckpointError, match="unexpected persistent id"):
    load_torch_checkpoint(save(tmp_path, {"x": odd}))


# --- malicious files ----------------------------------------------------------------------


def _payloads(marker: Path):
  cmd = f"touch {marker}"
  return {
      "posix.system": Reduce(Global("posix", "system"), cmd),
      "os.system": Reduce(Global("os", "system"), cmd),
      "builtins.eval": Reduce(Global("builtins", "eval"), f"__import__('os').system({cmd!r})"),
      "subprocess.Popen": Reduce(Global("subprocess", "Popen"), ["touch", str(marker)]),
      "torch.load": Reduce(Global("torch", "load"), str(marker)),
  }


@pytest.mark.parametrize("refused", ["posix.system", "os.system", "builtins.eval", "subprocess.Popen", "torch.load"])
def test_malicious_global_is_refused(tmp_path, refused):
  marker = tmp_path / "pwned"
  st = StorageRef("FloatStorage", "0", 2)
  obj = collections.OrderedDict([("ok", tensor(st, 0, (2,), (1,))), ("evil", _payloads(marker)[refused])])
  pkl = dumps({"state_dict": obj})
  # The file is live: the standard unpickler would import and call the payload.
  ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pkl)]
  assert ("GLOBAL", refused.replace(".", " ")) in ops and ("REDUCE", None) in ops
  path = write_zip(tmp_path / "evil.pth", pkl, {"0": np.zeros(2, np.float32).tobytes()})
  with pytest.raises(UnsafeCheckpointError, match=rf"evil\.pth.*'{refused}'.*not executed"):
    load_torch_checkpoint(path)
  assert not marker.exists()


def test_malicious_global_inside_tensor_arguments(tmp_path):
  marker = tmp_path / "pwned"
  evil_offset = _payloads(marker)["os.system"]
  obj = {"w": tensor(StorageRef("FloatStorage", "0", 2), evil_offset, (1,), (1,))}
  path = save(tmp_path, obj, {"0": np.zeros(2, np.float32).tobytes()})
  with pytest.raises(UnsafeCheckpointError, match="'os.system'"):
    load_torch_checkpoint(path)
  assert not marker.exists()


def test_malicious_storage_type_refused(tmp_path):
  ref = StorageRef("FloatStorage", "0", 2)
  ref.pid = ("storage", Global("posix", "system"), "0", "cpu", 2)
  with pytest.raises(UnsafeCheckpointError, match="'posix.system'"):
    load_torch_checkpoint(save(tmp_path, {"w": tensor(ref, 0, (2,), (1,))}))


def _short(s: str) -> bytes:
  return pickle.SHORT_BINUNICODE + bytes([len(s)]) + s.encode()


@pytest.mark.parametrize("kind", ["stack_global", "inst"])
def test_other_global_opcodes_refused(tmp_path, kind):
  marker = tmp_path / "pwned"
  cmd = f"touch {marker}"
  if kind == "stack_global":  # protocol 4: module and name come from the stack
    pkl = (
        pickle.PROTO + b"\x04" + _short("os") + _short("system") + pickle.STACK_GLOBAL + _short(cmd) + pickle.TUPLE1 +
        pickle.REDUCE + pickle.STOP)
  else:  # protocol 0 INST: import os.system and call it with the marked arguments
    pkl = pickle.MARK + pickle.STRING + repr(cmd).encode() + b"\n" + b"ios\nsystem\n" + pickle.STOP
  path = write_zip(tmp_path / "evil.pth", pkl)
  with pytest.raises(UnsafeCheckpointError, match="'os.system'"):
    load_torch_checkpoint(path)
  assert not marker.exists()


def test_malicious_plain_pickle_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pkl"
  path.write_bytes(dumps(_payloads(marker)["posix.system"]))
  with pytest.raises(UnsafeCheckpointError, match="'posix.system'"):
    load_torch_checkpoint(path)
  assert not marker.exists()


def test_allow_list_is_small_and_torch_free():
  assert "collections.OrderedDict" in ALLOWED_GLOBALS
  assert "torch._utils._rebuild_tensor_v2" in ALLOWED_GLOBALS
  assert "argparse.Namespace" in ALLOWED_GLOBALS
  assert {g.split(".")[0] for g in ALLOWED_GLOBALS} == {"collections", "argparse", "torch"}
  for obj in tp._ALLOWED.values():  # stand-ins only: nothing taken from torch or argparse
    module = getattr(obj, "__module__", None) or type(obj).__module__
    assert module in {"cast_jax.torch_pickle", "collections", "types"}


# --- broken files -------------------------------------------------------------------------


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint file"):
    load_torch_checkpoint(tmp_path / "nope.pth")


def test_truncated_golden(tmp_path, moco_folder):
  data = golden(moco_folder).read_bytes()
  path = tmp_path / "half.pth.tar"
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match=r"half\.pth\.tar.*truncated"):
    load_torch_checkpoint(path)


def test_random_bytes(tmp_path):
  path = tmp_path / "noise.pth"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(CheckpointError, match=r"noise\.pth.*not a PyTorch checkpoint") as info:
    load_torch_checkpoint(path)
  assert not isinstance(info.value, UnsafeCheckpointError)


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
  path = tmp_path / "dict.pkl"
  path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
  with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
    load_torch_checkpoint(path)


def test_empty_file(tmp_path):
  path = tmp_path / "empty.pth"
  path.write_bytes(b"")
  with pytest.raises(CheckpointError, match=r"empty\.pth.*empty"):
    load_torch_checkpoint(path)


def test_zip_without_data_pkl(tmp_path):
  path = tmp_path / "other.zip"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("readme.txt", "hello")
  with pytest.raises(CheckpointError, match=r"other\.zip.*data\.pkl.*not a torch\.save"):
    load_torch_checkpoint(path)


def test_torchscript_archive(tmp_path):
  path = tmp_path / "scripted.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("m/data.pkl", dumps({}))
    z.writestr("m/constants.pkl", dumps(()))
    z.writestr("m/code/__torch__.py", "")
  with pytest.raises(CheckpointError, match="TorchScript"):
    load_torch_checkpoint(path)


def test_garbage_data_pkl(tmp_path):
  path = write_zip(tmp_path / "garbage.pth", b"\x80\x02}q\x00(X\x05")
  with pytest.raises(CheckpointError, match=r"garbage\.pth.*could not unpickle.*data\.pkl"):
    load_torch_checkpoint(path)


def test_corrupt_storage_crc(tmp_path):
  data = np.arange(64, dtype=np.float32)
  obj = {"w": tensor(StorageRef("FloatStorage", "0", 64), 0, (64,), (1,))}
  path = save(tmp_path, obj, {"0": data.tobytes()})
  blob = bytearray(path.read_bytes())
  at = bytes(blob).find(data.tobytes())
  blob[at + 10] ^= 0xFF
  path.write_bytes(bytes(blob))
  with pytest.raises(CheckpointError, match=r"ckpt\.pth.*corrupt"):
    load_torch_checkpoint(path)


# --- legacy (pre-1.6) format ----------------------------------------------------------------


def _legacy_file(path, obj, storages: dict[str, np.ndarray]):
  buf = io.BytesIO()
  pickle.dump(0x1950A86A20F9469CFC6C, buf, protocol=2)
  pickle.dump(1001, buf, protocol=2)
  pickle.dump({
      "protocol_version": 1001,
      "little_endian": True,
      "type_sizes": {
          "short": 2,
          "int": 4,
          "long": 4
      }
  },
              buf,
              protocol=2)
  _Writer(buf, protocol=2).dump(obj)
  pickle.dump(sorted(storages), buf, protocol=2)
  for key in sorted(storages):
    arr = storages[key]
    buf.write(struct.pack("<q", arr.size) + arr.astype(arr.dtype.newbyteorder("<")).tobytes())
  path.write_bytes(buf.getvalue())
  return path


def _legacy_example(tmp_path):
  floats = np.arange(6, dtype=np.float32)
  longs = np.arange(100, 110, dtype=np.int64)
  f = StorageRef("FloatStorage", "0", 6, legacy=True)
  view = StorageRef("LongStorage", "1", 10, legacy=True, view=("1v", 4, 3))
  obj = {
      "state_dict":
          collections.OrderedDict([
              ("w", tensor(f, 0, (3, 2), (1, 3))),
              ("b", tensor(f, 5, (), ())),
              ("view", tensor(view, 1, (2,), (1,))),
              ("root", tensor(StorageRef("LongStorage", "1", 10, legacy=True), 8, (2,), (1,))),
          ]),
      "epoch":
          3
  }
  return _legacy_file(tmp_path / "legacy.pth", obj, {"0": floats, "1": longs})


def test_legacy_format(tmp_path):
  out = load_torch_checkpoint(_legacy_example(tmp_path))
  assert out["epoch"] == 3
  sd = out["state_dict"]
  assert isinstance(sd, collections.OrderedDict) and list(sd) == ["w", "b", "view", "root"]
  np.testing.assert_array_equal(sd["w"], np.arange(6).reshape(2, 3).T)
  assert sd["b"].shape == () and sd["b"] == 5
  np.testing.assert_array_equal(sd["view"], [105, 106])  # view starts at element 4, +1
  np.testing.assert_array_equal(sd["root"], [108, 109])
  assert sd["view"].dtype == np.int64


def test_legacy_truncated(tmp_path):
  path = _legacy_example(tmp_path)
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(CheckpointError, match=r"legacy\.pth.*truncated"):
    load_torch_checkpoint(path)


def test_legacy_malicious(tmp_path):
  marker = tmp_path / "pwned"
  path = _legacy_file(tmp_path / "legacy_evil.pth", {"x": _payloads(marker)["os.system"]}, {})
  with pytest.raises(UnsafeCheckpointError, match="'os.system'"):
    load_torch_checkpoint(path)
  assert not marker.exists()
