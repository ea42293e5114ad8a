"""Seeds for the calibration-data harness (fuzz/fuzz_calib.c), into the directory given: the
harness's inputs x (float, 3 columns), ids (int64), sr (int64 scalar), state (fp16 [2, 1, 4]) and
any (uint8, unknown rank), in each layout the harness reads: .safetensors (byte 0), .npz (byte 1),
and a test-data directory of input_K.pb files (byte 2, then the file count and each file but the
last behind its 16-bit length). Every seed here is valid data for those inputs."""
import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
ST_DTYPES = {np.float32: "F32", np.float16: "F16", np.int64: "I64", np.uint8: "U8"}


def safetensors(arrays, metadata=None):
    header, blobs, at = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, a in arrays.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": ST_DTYPES[a.dtype.type], "shape": list(a.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def npz(arrays, compressed):
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def test_data(tensors):
    files = [t.SerializeToString() for t in tensors]
    body = bytes([len(files) - 1])
    for f in files[:-1]:
        body += struct.pack("<H", len(f)) + f
    return body + files[-1]


x = rng.standard_normal((4, 2, 3)).astype(np.float32)
ids = rng.integers(0, 1000, (4, 5)).astype(np.int64)
sets = {
    "stacked": {"x": x, "ids": ids},
    "stacked-scalar": {"x": x, "ids": ids, "sr": np.array(16000, np.int64)},
    "rows": {"x": x[0], "ids": ids[:2, 0]},
    "shared-state": {"x": x, "ids": ids, "state": np.ones((1, 2, 1, 4), np.float16)},
    "any-rank": {"x": x[:3], "ids": ids[:3], "any": np.arange(15, dtype=np.uint8).reshape(3, 5)},
    "empty-rows": {"x": np.zeros((2, 0, 3), np.float32), "ids": np.zeros((2, 0), np.int64)},
}
for name, arrays in sets.items():
    (out / f"st-{name}").write_bytes(b"\0" + safetensors(arrays))
    (out / f"npz-{name}").write_bytes(b"\1" + npz(arrays, compressed=name.startswith("s")))
(out / "st-metadata").write_bytes(b"\0" + safetensors(sets["stacked"], {"format": "pt"}))

named = [numpy_helper.from_array(x[0], "x"), numpy_helper.from_array(ids[0], "ids"),
         numpy_helper.from_array(np.array(8000, np.int64), "sr")]
(out / "pb-named").write_bytes(b"\2" + test_data(named))
(out / "pb-by-position").write_bytes(b"\2" + test_data([numpy_helper.from_array(x[1]), numpy_helper.from_array(ids[1])]))
typed = [helper.make_tensor("x", 1, [1, 3], [0.5, -1.0, 2.0]), helper.make_tensor("ids", 7, [2], [3, 4])]
(out / "pb-typed-fields").write_bytes(b"\2" + test_data(typed))
