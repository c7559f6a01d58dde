"""Writes a random dense word-level LSTM language model as PyTorch-named safetensors with
its balsa description, for `balsa convert` to prune: tokens from a vocabulary -> embedding
-> stacked LSTM -> fc to the vocabulary -> softmax. Only numpy is needed.
Defaults (10,000 words, embedding 128, one LSTM layer of 256) are bench/v2_tensors.sh's
model; bench/http.sh builds the PTB "medium" shape with
`--embed 650 --hidden 650 --layers 2` (the paper's hidden-650 language model).
Usage: python3 bench/make_lm_model.py OUT.safetensors [--vocab V] [--embed E]
       [--hidden H] [--layers L] [--name NAME]"""
import argparse
import json
import struct

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--vocab", type=int, default=10000)
p.add_argument("--embed", type=int, default=128)
p.add_argument("--hidden", type=int, default=256)
p.add_argument("--layers", type=int, default=1)
p.add_argument("--name", default="lm10k")
a = p.parse_args()
V, E, H, L = a.vocab, a.embed, a.hidden, a.layers

rng = np.random.default_rng(1)
t = {"embedding.weight": rng.uniform(-0.1, 0.1, (V, E))}
for k in range(L):
    t[f"lstm.weight_ih_l{k}"] = rng.uniform(-0.08, 0.08, (4 * H, E if k == 0 else H))
    t[f"lstm.weight_hh_l{k}"] = rng.uniform(-0.08, 0.08, (4 * H, H))
    t[f"lstm.bias_ih_l{k}"] = rng.uniform(-0.08, 0.08, (4 * H,))
    t[f"lstm.bias_hh_l{k}"] = rng.uniform(-0.08, 0.08, (4 * H,))
t["fc.0.weight"] = rng.uniform(-0.08, 0.08, (V, H))
t["fc.0.bias"] = rng.uniform(-0.08, 0.08, (V,))
desc = {"format_version": 1, "name": a.name, "input": "tokens", "vocab_size": V, "input_size": E,
        "hidden_size": H, "num_layers": L, "bidirectional": False, "lstm_bias": True,
        "fc": [{"out": V, "activation": "none", "bias": True}], "head": "softmax"}
header, blobs, off = {"__metadata__": {"balsa": json.dumps(desc)}}, [], 0
for name, arr in t.items():
    b = arr.astype("<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(a.out, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for b in blobs:
        f.write(b)
