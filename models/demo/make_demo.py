"""Regenerates the demo model, models/demo/demo.safetensors, deterministically:
a token-input LSTM language model (vocabulary 1000, embedding 64, 2 LSTM layers of 128,
fc to the vocabulary, softmax) with seeded random weights, exported dense and pruned by
`balsa convert` to 90% balanced sparsity in banks of 32.

    /usr/bin/python3 models/demo/make_demo.py [path/to/balsa]

(default balsa binary: build/cpu/balsa, then build/cuda/balsa). The weights are random:
the demo shows the service, not a trained model.
"""
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import balsa_export  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main():
    balsa = sys.argv[1] if len(sys.argv) > 1 else next(
        (p for p in (os.path.join(ROOT, "build/cpu/balsa"), os.path.join(ROOT, "build/cuda/balsa"))
         if os.path.exists(p)), None)
    if not balsa:
        sys.exit("make_demo: build balsa first (make), or pass the path of the balsa binary")
    torch.manual_seed(20261128)
    emb = torch.nn.Embedding(1000, 64)
    lstm = torch.nn.LSTM(64, 128, num_layers=2, batch_first=True)
    fc = torch.nn.Linear(128, 1000)
    out = os.path.join(ROOT, "models/demo/demo.safetensors")
    with tempfile.TemporaryDirectory() as d:
        dense = os.path.join(d, "dense.safetensors")
        balsa_export.export(dense, embedding=emb, lstm=lstm, fc=[(fc, "none")],
                            head="softmax", name="demo")
        subprocess.run([balsa, "convert", dense, "-o", out, "--sparsity", "0.9", "--bank", "32",
                        "--quiet"], check=True)


if __name__ == "__main__":
    main()
