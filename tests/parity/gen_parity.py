"""Parity cases for tests/test_parity.c: random PyTorch networks (embedding or vector
input, 1-2 LSTM layers, uni- and bidirectional, odd sizes, FC layers, heads), exported
dense with models/tools/balsa_export.py (pruned first on the PyTorch side with the same
balanced pruning `balsa convert` applies, for the sparse cases), random batches of
sequences of lengths 1..50, and PyTorch's outputs (computed in float64) for "last" and
"all". The "state" cases give most sequences a random initial state (h_0, c_0) and write
PyTorch's final state (h_n, c_n) too. Writes DIR/manifest.json plus per-case
.safetensors/.bin files.

    /usr/bin/python3 tests/parity/gen_parity.py DIR

Exits 77 when torch cannot be imported (the C test counts that as a skip).
"""
import json
import os
import random
import sys

try:
    import torch
except ImportError:
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "models", "tools"))
import balsa_export as bx  # noqa: E402

ACTS = {"none": lambda x: x, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}

# name, input ("tokens", vocab, emb) or ("vectors", size), lstm (hidden, layers, bidir, bias)
# or None, fc [(out, act, bias)], head, pruning (sparsity, bank) or None, keep dense, and
# optionally extras: "dtype" (the exported file's: float16/bfloat16; the reference uses the
# rounded weights), "quantize" (weights rounded to multiples of it, so that banks hold
# equal magnitudes) and "export_unpruned" (export before pruning on the PyTorch side, so
# that balsa convert's pruning, ties included, must pick what PyTorch's picked), "state"
# (random h_0/c_0 for every sequence but each third, whose state is zero; h_n/c_n written)
CASES = [
    ("vec_1l_dense", ("vectors", 19), (37, 1, False, True), [], "none", None, []),
    ("vec_2l_sparse", ("vectors", 19), (37, 2, False, True), [(11, "relu", True)], "softmax",
     (0.9, 32), []),
    ("tok_1l_bidir_dense", ("tokens", 50, 19), (37, 1, True, True),
     [(13, "tanh", True), (7, "none", False)], "log_softmax", None, []),
    ("tok_2l_bidir_sparse", ("tokens", 50, 16), (37, 2, True, True), [(13, "sigmoid", True)],
     "none", (0.75, 8), []),
    ("vec_2l_nobias_keepdense", ("vectors", 7), (20, 2, False, False), [(5, "none", True)],
     "softmax", (0.5, 4), ["fc.0.weight"]),
    ("vec_fc_only", ("vectors", 19), None, [(23, "relu", True), (3, "none", True)], "softmax",
     (0.5, 4), []),
    ("tok_lm_sparse", ("tokens", 97, 24), (64, 2, False, True), [(97, "none", True)],
     "log_softmax", (0.9, 32), []),
    ("vec_ties_sparse", ("vectors", 9), (12, 1, False, True), [(6, "none", True)], "softmax",
     (0.75, 8), [], {"quantize": 0.125, "export_unpruned": True}),
    ("tok_bf16_sparse", ("tokens", 30, 10), (9, 1, True, True), [(4, "relu", True)], "none",
     (0.5, 4), [], {"dtype": torch.bfloat16}),
    ("vec_f16_dense", ("vectors", 6), (10, 2, False, True), [], "none", None,
     [], {"dtype": torch.float16}),
    ("vec_1l_state", ("vectors", 11), (23, 1, False, True), [(5, "none", True)], "softmax",
     None, [], {"state": True}),
    ("tok_2l_state_sparse", ("tokens", 40, 12), (32, 2, False, True), [(40, "none", True)],
     "log_softmax", (0.75, 8), [], {"state": True}),
    ("vec_2l_bidir_state_sparse", ("vectors", 9), (24, 2, True, True), [(6, "tanh", True)],
     "none", (0.5, 8), [], {"state": True}),
    ("tok_1l_bidir_state", ("tokens", 30, 10), (17, 1, True, True), [], "none", None, [],
     {"state": True}),
]


def build(case, rng_seed):
    name, inp, lstm_cfg, fcs, head, prune, keep = case[:7]
    extra = case[7] if len(case) > 7 else {}
    torch.manual_seed(rng_seed)
    emb = torch.nn.Embedding(inp[1], inp[2]) if inp[0] == "tokens" else None
    in_size = inp[2] if emb is not None else inp[1]
    lstm = None
    width = in_size
    if lstm_cfg:
        h, layers, bidir, bias = lstm_cfg
        lstm = torch.nn.LSTM(in_size, h, num_layers=layers, bidirectional=bidir, bias=bias,
                             batch_first=True)
        width = h * (2 if bidir else 1)
    fc = []
    for out, act, bias in fcs:
        fc.append((torch.nn.Linear(width, out, bias=bias), act))
        width = out
    params = [p for m in [emb, lstm] + [l for l, _ in fc] if m is not None for p in m.parameters()]
    with torch.no_grad():
        for p in params:
            if "quantize" in extra:
                p.copy_(torch.round(p / extra["quantize"]) * extra["quantize"])
            if "dtype" in extra:  # the values the exported file will hold
                p.copy_(p.to(extra["dtype"]).float())
    return emb, lstm, fc, in_size, extra


def forward(emb, lstm, fc, head, x, all_steps, state=None):
    """One sequence (1 x len [x features]) in float64, from state (h_0, c_0) or zeros;
    (len or 1) x out, and the final state (h_n, c_n) or None without an LSTM."""
    h = emb(x) if emb is not None else x
    final = None
    if lstm is not None:
        out, (hn, cn) = lstm(h, state) if state is not None else lstm(h)
        final = (hn, cn)
        if all_steps:
            h = out[0]
        elif lstm.bidirectional:
            h = torch.cat((hn[-2], hn[-1]), dim=1)  # both directions after the whole input
        else:
            h = out[0, -1:]
    else:
        h = h[0] if all_steps else h[0, -1:]
    for lin, act in fc:
        h = ACTS[act](lin(h))
    if head == "softmax":
        h = torch.softmax(h, dim=-1)
    elif head == "log_softmax":
        h = torch.log_softmax(h, dim=-1)
    return h, final


def main():
    out_dir = sys.argv[1]
    rng = random.Random(1234)
    manifest = []
    for ci, case in enumerate(CASES):
        name, inp, _, _, head, prune, keep = case[:7]
        emb, lstm, fc, in_size, extra = build(case, 100 + ci)
        path = os.path.join(out_dir, name + ".safetensors")

        def export():
            return bx.export(path, embedding=emb, lstm=lstm, fc=fc, head=head, name=name,
                             input_size=in_size, dtype=extra.get("dtype", torch.float32))
        if extra.get("export_unpruned"):
            desc = export()
        if prune:
            bx.prune_network_(lstm, fc, prune[0], prune[1], keep_dense=keep)
        if not extra.get("export_unpruned"):
            desc = export()
        n = rng.randint(1, 16)
        lens = [rng.randint(1, 50) for _ in range(n)]
        lens[0] = 50 if n > 1 else lens[0]
        if n > 2:
            lens[1] = 1
        inputs, last, every = [], [], []
        use_state = extra.get("state", False)
        state_mask, h0s, c0s, hns, cns = [], [], [], [], []
        mods = [m for m in (emb, lstm) if m is not None] + [l for l, _ in fc]
        for m in mods:
            m.double()
        with torch.no_grad():
            for ln in lens:
                if emb is not None:
                    x = torch.tensor([[rng.randrange(inp[1]) for _ in range(ln)]])
                    inputs.append(x.to(torch.int32).flatten())
                else:
                    x = torch.tensor([[[rng.uniform(-1, 1) for _ in range(in_size)]
                                       for _ in range(ln)]], dtype=torch.float32)
                    inputs.append(x.flatten())
                    x = x.double()
                state = None
                if use_state:
                    given = len(state_mask) % 3 != 2
                    state_mask.append(1 if given else 0)
                    shape = (lstm.num_layers * (2 if lstm.bidirectional else 1), 1,
                             lstm.hidden_size)
                    h0 = torch.tensor([[[rng.uniform(-1, 1) for _ in range(shape[2])]]
                                       for _ in range(shape[0])], dtype=torch.float32)
                    c0 = torch.tensor([[[rng.uniform(-2, 2) for _ in range(shape[2])]]
                                       for _ in range(shape[0])], dtype=torch.float32)
                    if not given:
                        h0, c0 = torch.zeros(shape), torch.zeros(shape)
                    h0s.append(h0.flatten())
                    c0s.append(c0.flatten())
                    state = (h0.double(), c0.double())
                y, final = forward(emb, lstm, fc, head, x, False, state)
                last.append(y.flatten())
                every.append(forward(emb, lstm, fc, head, x, True, state)[0].flatten())
                if use_state:
                    hns.append(final[0].flatten())
                    cns.append(final[1].flatten())
        with open(os.path.join(out_dir, name + ".in.bin"), "wb") as f:
            f.write(torch.cat(inputs).numpy().tobytes())
        with open(os.path.join(out_dir, name + ".last.bin"), "wb") as f:
            f.write(torch.cat(last).numpy().tobytes())
        with open(os.path.join(out_dir, name + ".all.bin"), "wb") as f:
            f.write(torch.cat(every).numpy().tobytes())
        # h0/c0 (float32) for every sequence, zeros where state_mask is 0; h_n/c_n float64
        for suffix, parts in ((".h0.bin", h0s), (".c0.bin", c0s), (".hn.bin", hns),
                              (".cn.bin", cns)):
            if use_state:
                with open(os.path.join(out_dir, name + suffix), "wb") as f:
                    f.write(torch.cat(parts).numpy().tobytes())
        manifest.append({"name": name, "lens": lens, "output_size": fc[-1][0].out_features
                         if fc else desc["hidden_size"] * (2 if desc["bidirectional"] else 1),
                         "sparsity": prune[0] if prune else 0.0,
                         "bank": prune[1] if prune else 32, "keep_dense": keep,
                         "state_mask": state_mask})
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump({"cases": manifest}, f)


if __name__ == "__main__":
    main()
