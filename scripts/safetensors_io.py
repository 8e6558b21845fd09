"""Minimal safetensors reader/writer (no `safetensors` package needed), shared by the reference scripts.

Format: 8-byte little-endian u64 header length N, then N bytes of JSON: for each tensor
{"dtype": "F32"|"F64"|"I32", "shape": [...], "data_offsets": [begin, end]}, plus an optional
"__metadata__" map of string -> string; then the raw little-endian data. Offsets are relative to the
first byte after the header. The writer lays tensors out in the order given and pads the header with
spaces to a multiple of 8 bytes (as the reference implementation does) so the data is aligned.
"""
import json
import struct
from collections import OrderedDict

import numpy as np

_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I32": np.dtype("<i4")}


def _dtype_name(arr):
    for name, dt in _DTYPES.items():
        if arr.dtype == dt or arr.dtype == dt.newbyteorder("="):
            return name
    raise ValueError(f"unsupported dtype {arr.dtype}: only float32, float64, int32")


def save_file(tensors, path, metadata=None):
    """tensors: ordered mapping name -> numpy array (float32, float64 or int32). metadata: str -> str."""
    header = OrderedDict()
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError("__metadata__ must map strings to strings")
        header["__metadata__"] = OrderedDict(metadata)
    blobs = []
    offset = 0
    for name, arr in tensors.items():
        if name == "__metadata__":
            raise ValueError("'__metadata__' is not a tensor name")
        arr = np.asarray(arr)
        dname = _dtype_name(arr)
        data = np.ascontiguousarray(arr, dtype=_DTYPES[dname]).tobytes()
        header[name] = OrderedDict(
            [("dtype", dname), ("shape", list(arr.shape)), ("data_offsets", [offset, offset + len(data)])])
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)


def load_file(path):
    """Returns (OrderedDict name -> numpy array, metadata dict). Checks offsets and sizes."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} exceeds file size {len(raw)}")
    header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=OrderedDict)
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", None) or {}
    out = OrderedDict()
    for name, info in header.items():
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != count * dt.itemsize or end > len(data) or begin < 0:
            raise ValueError(f"{path}: tensor {name}: bad data_offsets {begin}..{end} for shape {shape}")
        out[name] = np.frombuffer(data, dtype=dt, count=count, offset=begin).reshape(shape).copy()
    return out, dict(metadata)
