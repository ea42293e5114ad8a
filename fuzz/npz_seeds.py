"""Seeds for the .npz harness: small archives as numpy writes them (stored,
deflated, with zip64 records, scalars and empty arrays), into the directory
given."""
import sys
import zipfile
from pathlib import Path

import numpy as np

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
arrays = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32), "sr": np.array(16000, np.int64),
          "mask": np.array([True, False]), "h": np.arange(6, dtype=np.float16).reshape(2, 3), "e": np.zeros((0, 4))}
np.savez(out / "stored.npz", **arrays)
np.savez_compressed(out / "deflated.npz", **arrays)
limits = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 16, 1
try:
    np.savez(out / "zip64.npz", **arrays)
finally:
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = limits
