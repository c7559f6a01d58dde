"""PyTorch's side of the checks that balsa runs the trained model right. The PyTorch model is
built from the balsa model file itself (balanced-sparse matrices rebuilt dense), so both
sides use the same weights.

    /usr/bin/python3 models/train/balsa_check.py reference --model M --chars N --out DIR
        writes DIR/ids.i32 (the first N characters of the test split as int32 token ids) and
        DIR/logprobs.f64 (N x vocab log-probabilities of the next character, float64, from
        a float64 copy of the model): tests/test_fortunes.c compares balsa's output to it.

    /usr/bin/python3 models/train/balsa_check.py bpc [--model M] [--test-bin B] [--pieces 64]
        bits per character on the whole test split, PyTorch (float32, as study.py measures)
        against balsa (`B --bpc`, default build/cpu then build/cuda tests/test_fortunes), the
        split cut into the same pieces; exits 1 when they differ by more than 1e-4 relative.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import corpus  # noqa: E402
import study  # noqa: E402
from make_fortunes_model import balsa_dense_weights  # noqa: E402
from prune import balsa_export  # noqa: E402

DEFAULT_MODEL = os.path.join(ROOT, "models", "fortunes", "fortunes-b90.safetensors")


def load_model(path):
    """(CharLM with the balsa file's weights, its description)."""
    tensors, meta = balsa_export.read_safetensors(path)
    desc = json.loads(meta["balsa"])
    w = balsa_dense_weights(tensors, desc)
    if desc.get("bidirectional") or len(desc["fc"]) != 1 or desc["input"] != "tokens":
        raise ValueError(f"{path}: not a token LSTM with one fc layer")
    m = study.CharLM(desc["vocab_size"], desc["input_size"], desc["hidden_size"], desc["num_layers"])
    state = {("fc." + k[len("fc.0."):]) if k.startswith("fc.0.") else k: v for k, v in w.items()}
    m.load_state_dict(state)
    return m.eval(), desc


def test_ids():
    texts, _ = corpus.splits()
    return corpus.encode(texts["test"])


def reference(args):
    model, _ = load_model(args.model)
    model = model.double()
    ids = test_ids()[:args.chars]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
        lp = torch.log_softmax(logits[0], dim=-1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ids.i32"), "wb") as f:
        f.write(struct.pack(f"<{len(ids)}i", *ids))
    with open(os.path.join(args.out, "logprobs.f64"), "wb") as f:
        f.write(lp.contiguous().numpy().astype("<f8").tobytes())
    return 0


def find_test_bin():
    for p in ("build/cpu/tests/test_fortunes", "build/cuda/tests/test_fortunes"):
        if os.path.exists(os.path.join(ROOT, p)):
            return os.path.join(ROOT, p)
    return None


def bpc(args):
    torch.set_num_threads(1)
    model, _ = load_model(args.model)
    ids = test_ids()
    ours = study.evaluate(model, ids, args.pieces)
    print(f"pytorch: {ours['bpc']:.6f} bits per character over {ours['chars']} characters "
          f"({args.pieces} pieces)")
    test_bin = args.test_bin or find_test_bin()
    if not test_bin:
        sys.exit("balsa_check: build the tests first (make), or pass --test-bin")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "test.i32")
        with open(path, "wb") as f:
            f.write(struct.pack(f"<{len(ids)}i", *ids))
        out = subprocess.run([test_bin, "--bpc", args.model, path, str(args.pieces)],
                             check=True, capture_output=True, text=True).stdout
    got = dict(line.split(" ", 1) for line in out.strip().splitlines())
    theirs, chars = float(got["bpc"]), int(got["chars"])
    rel = abs(theirs - ours["bpc"]) / ours["bpc"]
    print(f"balsa:   {theirs:.6f} bits per character over {chars} characters")
    print(f"relative difference {rel:.2e} (bound 1e-4); per-character perplexity "
          f"{2 ** ours['bpc']:.4f} / {2 ** theirs:.4f}")
    if chars != ours["chars"] or not math.isfinite(theirs) or rel > 1e-4:
        print("MISMATCH")
        return 1
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--model", default=DEFAULT_MODEL)
    r.add_argument("--chars", type=int, default=400)
    r.add_argument("--out", required=True)
    b = sub.add_parser("bpc")
    b.add_argument("--model", default=DEFAULT_MODEL)
    b.add_argument("--test-bin")
    b.add_argument("--pieces", type=int, default=64)
    args = ap.parse_args(argv)
    return reference(args) if args.cmd == "reference" else bpc(args)


if __name__ == "__main__":
    sys.exit(main())
