"""Makes balsa's trained demo model from the pruning study: the balanced run's weights at one
level (default 90%: k = 3 of every 32) of the follow-up study (600 fine-tuning steps per
level, the better model), exported by study.py, converted by `balsa convert` to
balanced-sparse storage, with the character vocabulary added to the description.

    /usr/bin/python3 models/train/make_fortunes_model.py [--results models/train/results-ft600]
        [--level 0.9] [--balsa build/cpu/balsa] [--out models/fortunes/fortunes-b90.safetensors]

Checks before writing: `balsa convert` kept exactly the weights the study kept (the dense
matrix rebuilt from values/offsets equals the study's pruned matrix bit for bit, and every
other tensor is unchanged), and `balsa inspect` accepts the result. The vocabulary goes
into the description as "vocabulary": a list whose i-th string is the character of token
i (the loader uses it: text in, text out). Exits non-zero on any mismatch.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import corpus  # noqa: E402
from prune import balsa_export  # noqa: E402


def find_balsa():
    """build/cpu/balsa, else build/cuda/balsa, else None."""
    for p in ("build/cpu/balsa", "build/cuda/balsa"):
        if os.path.exists(os.path.join(ROOT, p)):
            return os.path.join(ROOT, p)
    return None


def rebuild(values, offsets, cols):
    """Dense [rows, cols] from balanced-sparse values/offsets [rows, nbanks, k]."""
    rows, nb, _ = values.shape
    bank = -(-cols // nb)
    out = torch.zeros(rows, nb * bank, dtype=values.dtype)
    base = torch.arange(nb).reshape(1, nb, 1) * bank
    idx = (base + offsets.long()).reshape(rows, -1)
    out.scatter_(1, idx, values.reshape(rows, -1))
    return out[:, :cols]


def balsa_dense_weights(tensors, desc):
    """Every tensor of a balsa model file as PyTorch would hold it: balanced-sparse matrices
    rebuilt dense (from the description's `matrices` shapes), the rest as stored."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(".offsets"):
            continue
        if name.endswith(".values"):
            base = name[:-len(".values")]
            shape = desc["matrices"][base]["shape"]
            out[base] = rebuild(t, tensors[base + ".offsets"], shape[1])
        else:
            out[name] = t
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(HERE, "results-ft600"))
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--bank", type=int, default=32)
    ap.add_argument("--balsa", default=find_balsa())
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "fortunes", "fortunes-b90.safetensors"))
    args = ap.parse_args(argv)
    if not args.balsa:
        sys.exit("make_fortunes_model: build balsa first (make), or pass --balsa")
    src = os.path.join(args.results, "export", f"balanced_{args.level}.safetensors")
    if not os.path.exists(src):
        sys.exit(f"make_fortunes_model: {src} not found: run the study (make train) first")
    study_t, _ = balsa_export.read_safetensors(src)
    with tempfile.TemporaryDirectory() as d:
        conv = os.path.join(d, "converted.safetensors")
        subprocess.run([args.balsa, "convert", src, "-o", conv, "--sparsity", str(args.level),
                        "--bank", str(args.bank), "--quiet"], check=True)
        tensors, meta = balsa_export.read_safetensors(conv)
    desc = json.loads(meta["balsa"])
    got = balsa_dense_weights(tensors, desc)
    if set(got) != set(study_t):
        sys.exit(f"make_fortunes_model: tensors differ: {sorted(set(got) ^ set(study_t))}")
    for name, t in study_t.items():
        if not torch.equal(got[name], t):
            sys.exit(f"make_fortunes_model: {name} differs after balsa convert")
    sparse = [n for n in desc["matrices"] if desc["matrices"][n]["layout"] == "balanced"]
    print(f"balsa convert kept the study's weights exactly; balanced-sparse: {', '.join(sparse)}")
    desc["name"] = "fortunes-b90"
    desc["vocabulary"] = list(corpus.VOCAB)
    desc["comment"] = ("character-level LSTM language model trained on Debian's fortune cookies "
                       f"(models/train/RESULTS.md), {args.level:g} balanced sparsity in banks of "
                       f"{args.bank}; token i is the character vocabulary[i]; output: log-probabilities "
                       "of the next character")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    balsa_export.write_safetensors(args.out, tensors, {"balsa": json.dumps(desc)})
    subprocess.run([args.balsa, "inspect", args.out], check=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
