#!/usr/bin/env python3
"""Q6_K golden fixture from gguf-py, llama.cpp's own Python package (Debian python3-gguf).

Writes, into the folder given as the only argument:

  q6k_blocks.json  raw Q6_K rows (base64), gguf-py's dequantization of them (float32 little-endian, base64),
                   an activation vector x and numpy's float64 dot of every dequantized row with x
  q6k_tensor.gguf  the same rows as one Q6_K tensor "token_embd.weight" in a GGUF written by gguf-py's GGUFWriter

gguf-py 0.19 can dequantize Q6_K but not quantize it, so the blocks are random bytes (seeded) with a finite
fp16 super-block scale d, plus one row of edge blocks: every q = 63 with scales −128 and d = 65504 (the largest
finite half), every q = 0 with scales alternating 127/−128 and d = 2^−24 (the smallest subnormal half).

Run it inside a Debian sid chroot with python3-gguf and python3-numpy (see README.md); the output is
deterministic.
"""

import base64
import importlib.metadata
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize

QK_K = 256
BLOCK_BYTES = 210  # ql[128], qh[64], scales[16] (int8), d (fp16)
ROWS, COLS = 4, 512
SEED = 20250614


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def main(out: str) -> None:
    rng = np.random.default_rng(SEED)
    nb = COLS // QK_K
    blocks = rng.integers(0, 256, size=(ROWS, nb, BLOCK_BYTES), dtype=np.uint8)

    # d: signed, magnitudes from 1e-4 to 1 (a few land on subnormal halves), always finite.
    d = rng.uniform(-1.0, 1.0, size=(ROWS, nb)) * 10.0 ** rng.integers(-4, 1, size=(ROWS, nb))
    blocks[..., 208:210] = d.astype("<f2").view(np.uint8).reshape(ROWS, nb, 2)

    # Last row: edge blocks.
    edge = blocks[ROWS - 1]
    edge[0, 0:192] = 0xFF                                   # ql and qh all ones: q = 63 everywhere
    edge[0, 192:208] = np.uint8(0x80)                       # scales = -128
    edge[0, 208:210] = np.array([65504.0], dtype="<f2").view(np.uint8)
    edge[1, 0:192] = 0x00                                   # q = 0 everywhere (value -32)
    edge[1, 192:208] = np.array([127, -128] * 8, dtype=np.int8).view(np.uint8)
    edge[1, 208:210] = np.array([1], dtype="<u2").view(np.uint8)  # 2^-24

    data = blocks.reshape(ROWS, nb * BLOCK_BYTES)
    deq = dequantize(data, GGMLQuantizationType.Q6_K).astype("<f4").reshape(ROWS, COLS)
    if not np.all(np.isfinite(deq)):
        raise SystemExit("dequantized values must be finite")

    x = rng.standard_normal(COLS).astype("<f4")
    dots = deq.astype(np.float64) @ x.astype(np.float64)

    os.makedirs(out, exist_ok=True)
    fixture = {
        "generator": "tools/reference/make_q6k_fixture.py",
        "reference": "gguf.quants.dequantize(data, GGMLQuantizationType.Q6_K)",
        "gguf_py_version": importlib.metadata.version("gguf"),
        "numpy_version": np.__version__,
        "seed": SEED,
        "rows": ROWS,
        "cols": COLS,
        "block_bytes": BLOCK_BYTES,
        "blocks_base64": b64(data),
        "dequantized_f32le_base64": b64(deq),
        "x_f32le_base64": b64(x),
        "dot_f64": [float(v) for v in dots],
    }
    with open(os.path.join(out, "q6k_blocks.json"), "w", encoding="utf-8") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")

    writer = GGUFWriter(os.path.join(out, "q6k_tensor.gguf"), arch="q6k-fixture")
    # A uint8 array with raw_dtype: gguf-py turns the byte shape (rows, nb*210) into the element shape (cols, rows).
    writer.add_tensor("token_embd.weight", data, raw_dtype=GGMLQuantizationType.Q6_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_q6k_fixture.py OUTPUT_DIR")
    main(sys.argv[1])
