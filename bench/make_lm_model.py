"""Writes a random dense word-level LSTM language model as PyTorch-named safetensors with
its balsa description, for `balsa convert` to prune (bench/v2_tensors.sh): tokens from a
10,000-word vocabulary -> embedding 128 -> LSTM 256 -> fc 10,000 -> softmax. Only numpy
is needed. Usage: python3 bench/make_lm_model.py OUT.safetensors"""
import json
import struct
import sys

import numpy as np

V, E, H = 10000, 128, 256
rng = np.random.default_rng(1)
t = {
    "embedding.weight": rng.uniform(-0.1, 0.1, (V, E)),
    "lstm.weight_ih_l0": rng.uniform(-0.08, 0.08, (4 * H, E)),
    "lstm.weight_hh_l0": rng.uniform(-0.08, 0.08, (4 * H, H)),
    "lstm.bias_ih_l0": rng.uniform(-0.08, 0.08, (4 * H,)),
    "lstm.bias_hh_l0": rng.uniform(-0.08, 0.08, (4 * H,)),
    "fc.0.weight": rng.uniform(-0.08, 0.08, (V, H)),
    "fc.0.bias": rng.uniform(-0.08, 0.08, (V,)),
}
desc = {"format_version": 1, "name": "lm10k", "input": "tokens", "vocab_size": V, "input_size": E,
        "hidden_size": H, "num_layers": 1, "bidirectional": False, "lstm_bias": True,
        "fc": [{"out": V, "activation": "none", "bias": True}], "head": "softmax"}
header, blobs, off = {"__metadata__": {"balsa": json.dumps(desc)}}, [], 0
for name, a in t.items():
    b = a.astype("<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for b in blobs:
        f.write(b)
