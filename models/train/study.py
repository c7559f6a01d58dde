"""The pruning study: a character-level LSTM language model trained on Debian's fortune
cookies (corpus.py), then pruned iteratively with balsa's balanced pattern, unstructured
magnitude pruning and 4x4 / 16x16 block pruning, all with the same schedule and budget, and
measured in bits per character on the validation and test splits.

    /usr/bin/python3 models/train/study.py [--out models/train/results]   # the full study
    /usr/bin/python3 models/train/study.py --smoke --out /tmp/x           # seconds, tiny sizes

Schedule (per pattern, starting from the same dense model): for each level of
--levels in increasing order, prune LSTM weight_ih/weight_hh and the output FC weight to the
level (the new mask is chosen from the current, already pruned and fine-tuned weights), then
fine-tune --ft-steps steps with the mask enforced after every optimizer step, then evaluate
and save. A "dense" control run fine-tunes the dense model for the same steps without
pruning. Every run draws the same batches in the same order (seeded), so the patterns
differ only by their masks.

Writes into --out: <run>.json (settings + results of each run: dense, dense-ft,
balanced, unstructured, block4, block16), ckpt/<run>_<level>.pt (state dicts),
export/<run>_<level>.safetensors (the same weights for `balsa convert`), and then
RESULTS.md and bpc.png (or where --report says) through report.py. A run whose JSON is complete for the same
settings is not repeated, so an interrupted study can be restarted with the same command.
Exits non-zero on any error.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import corpus  # noqa: E402
import prune  # noqa: E402
import report  # noqa: E402

PATTERNS = ("balanced", "unstructured", "block4", "block16")


class CharLM(nn.Module):
    """embedding -> LSTM (batch first) -> fc to the vocabulary (logits). The attribute names
    match balsa's tensor names (embedding, lstm, fc.0)."""

    def __init__(self, vocab, emb, hidden, layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.lstm(self.embedding(x), state)
        return self.fc(out), state

    def prunable(self):
        """(balsa name, parameter) of every weight the study prunes."""
        out = [("lstm." + n, p) for n, p in self.lstm.named_parameters() if n.startswith("weight_")]
        out.append(("fc.0.weight", self.fc.weight))
        return out


def settings_from(args):
    """The settings that define a study (what a resumed run must match)."""
    keys = ("seed", "split_seed", "emb", "hidden", "layers", "seq", "batch", "dense_steps",
            "lr", "ft_steps", "ft_lr", "levels", "bank", "clip", "eval_streams", "eval_chars",
            "train_chars")
    return {k: getattr(args, k) for k in keys}


class Stream:
    """Truncated back-propagation through time over one long text: the ids are cut into
    `batch` parallel streams; step i reads chunk i mod nchunks of `seq` characters from
    each (inputs) and the next characters (targets); the LSTM state is carried from chunk
    to chunk and reset when the streams wrap."""

    def __init__(self, ids, batch, seq):
        n = (len(ids) - 1) // batch
        t = torch.tensor(ids[:n * batch + 1], dtype=torch.long)
        self.x = t[:-1].reshape(batch, n)
        self.y = t[1:].reshape(batch, n)
        self.seq = seq
        self.nchunks = n // seq
        if self.nchunks < 1:
            raise ValueError(f"training text too short for batch {batch} x seq {seq}")

    def chunk(self, step):
        c = step % self.nchunks
        s = slice(c * self.seq, (c + 1) * self.seq)
        return c == 0, self.x[:, s], self.y[:, s]


def train(model, stream, first_step, steps, lr, lr_end, clip, masks=None, log=None):
    """Adam (fresh state) for `steps` steps from global step `first_step`, the learning rate
    falling from lr to lr_end on a cosine; the masks (parameter -> bool tensor) are applied
    to the gradients and, after every step, to the weights. Returns the mean training loss
    (nats per character) of the last 10% of the steps."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    state, tail = None, []
    model.train()
    t0 = time.time()
    for i in range(steps):
        frac = i / max(1, steps - 1)
        for g in opt.param_groups:
            g["lr"] = lr_end + 0.5 * (lr - lr_end) * (1.0 + math.cos(math.pi * frac))
        reset, x, y = stream.chunk(first_step + i)
        if reset or state is None:
            state = None
        else:
            state = tuple(s.detach() for s in state)
        logits, state = model(x, state)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if masks:
            for p, m in masks.items():
                p.grad.mul_(m)
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if masks:
            with torch.no_grad():
                for p, m in masks.items():
                    p.mul_(m)
        if i >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if log and (i + 1) % 200 == 0:
            log(f"  step {i + 1}/{steps} loss {loss.item():.3f} ({(time.time() - t0) / (i + 1):.3f} s/step)")
    return sum(tail) / len(tail)


@torch.no_grad()
def evaluate(model, ids, streams, seq=256):
    """Bits per character and per-character perplexity of the model on `ids`: the text is
    cut into `streams` contiguous pieces read in parallel from a zero state (state carried
    across chunks of `seq`); every character but the first of each piece is predicted."""
    model.eval()
    n = (len(ids) - 1) // streams
    t = torch.tensor(ids[:n * streams + 1], dtype=torch.long)
    x = t[:-1].reshape(streams, n)
    y = t[1:].reshape(streams, n)
    total, count, state = 0.0, 0, None
    for s in range(0, n, seq):
        logits, state = model(x[:, s:s + seq], state)
        lp = torch.log_softmax(logits.double(), dim=-1)
        tgt = y[:, s:s + seq]
        total -= lp.gather(2, tgt.unsqueeze(2)).sum().item()
        count += tgt.numel()
    model.train()
    bpc = total / count / math.log(2)
    return {"bpc": bpc, "ppl": 2.0 ** bpc, "chars": count}


def export(model, path, name):
    """Writes the model for `balsa convert` (models/tools/balsa_export.py): dense tensors,
    pruned weights as zeros, log_softmax head."""
    prune.balsa_export.export(path, embedding=model.embedding, lstm=model.lstm,
                              fc=[(model.fc, "none")], head="log_softmax", name=name)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# Settings that only the pruning runs use: a dense model trained under other values of
# these is the same dense model.
PRUNING_ONLY = ("ft_steps", "ft_lr", "levels")


def load_done(path, settings, levels, ignore=()):
    """The stored run at `path` when it is complete for these settings (keys in `ignore`
    not compared), else None."""
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError):
        return None
    stored = r.get("settings") or {}
    if any(stored.get(k) != v for k, v in settings.items() if k not in ignore) or \
            set(stored) != set(settings) or len(r.get("levels", [])) != len(levels):
        return None
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps (tests)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--split-seed", type=int, default=1234)
    ap.add_argument("--emb", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dense-steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--levels", default="0.5,0.75,0.8,0.875,0.9,0.95")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--bank", type=int, default=32)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eval-streams", type=int, default=64)
    ap.add_argument("--eval-chars", type=int, default=0, help="0: whole split")
    ap.add_argument("--train-chars", type=int, default=0, help="0: whole split")
    ap.add_argument("--dense-from", help="reuse the dense model of this results folder "
                    "(trained with the same settings but for --ft-steps, --ft-lr, --levels)")
    ap.add_argument("--report", help="where RESULTS.md goes (bpc.png beside it); default <out>/RESULTS.md")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.emb, args.hidden, args.layers, args.seq, args.batch = 32, 32, 1, 16, 4
        args.dense_steps, args.ft_steps = 12, 2
        args.eval_streams, args.eval_chars, args.train_chars = 2, 1500, 20000
    args.levels = [float(v) for v in args.levels.split(",")]
    if args.levels != sorted(args.levels) or not all(0.0 < v < 1.0 for v in args.levels):
        ap.error("--levels must rise, each between 0 and 1")
    patterns = [p for p in args.patterns.split(",") if p]
    for p in patterns:
        if p not in PATTERNS:
            ap.error(f"unknown pattern {p!r} (known: {', '.join(PATTERNS)})")

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    os.makedirs(os.path.join(args.out, "ckpt"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "export"), exist_ok=True)
    settings = settings_from(args)
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)

    texts, counts = corpus.splits(seed=args.split_seed)
    ids = {k: corpus.encode(v) for k, v in texts.items()}
    if args.train_chars:
        ids["train"] = ids["train"][:args.train_chars]
    if args.eval_chars:
        ids["valid"] = ids["valid"][:args.eval_chars]
        ids["test"] = ids["test"][:args.eval_chars]
    data = {"files": [{"path": p, "bytes": b} for p, b in corpus.source_files()],
            "fortunes": counts, "chars": {k: len(v) for k, v in ids.items()},
            "vocab": corpus.VOCAB, "torch": torch.__version__, "threads": torch.get_num_threads()}
    log(f"data: {counts} fortunes, {data['chars']} characters")
    stream = Stream(ids["train"], args.batch, args.seq)

    def measure(model):
        return {"valid": evaluate(model, ids["valid"], args.eval_streams),
                "test": evaluate(model, ids["test"], args.eval_streams)}

    def new_model():
        torch.manual_seed(args.seed)
        return CharLM(len(corpus.VOCAB), args.emb, args.hidden, args.layers)

    # Dense baseline.
    dense_dir = args.dense_from or args.out
    dense_ckpt = os.path.join(dense_dir, "ckpt", "dense.pt")
    dense_json = os.path.join(args.out, "dense.json")
    done = load_done(os.path.join(dense_dir, "dense.json"), settings, [0.0], PRUNING_ONLY)
    model = new_model()
    if done and os.path.exists(dense_ckpt):
        model.load_state_dict(torch.load(dense_ckpt))
        log("dense: reusing " + dense_ckpt)
        if dense_dir != args.out:
            write_json(dense_json, {**done, "settings": settings, "dense_from": dense_dir})
    elif args.dense_from:
        ap.error(f"--dense-from {args.dense_from}: no dense model there for these settings")
    else:
        log(f"dense: training {args.dense_steps} steps")
        t0 = time.time()
        torch.manual_seed(args.seed + 1)
        loss = train(model, stream, 0, args.dense_steps, args.lr, args.lr * 0.05, args.clip, log=log)
        m = measure(model)
        torch.save(model.state_dict(), dense_ckpt)
        export(model, os.path.join(args.out, "export", "dense.safetensors"), "fortunes-dense")
        write_json(dense_json, {"run": "dense", "settings": settings, "data": data,
                                "params": sum(p.numel() for p in model.parameters()),
                                "levels": [{"sparsity": 0.0, "target_sparsity": 0.0,
                                            "train_loss": loss, "seconds": time.time() - t0,
                                            "steps": args.dense_steps, **m}]})
        log(f"dense: valid {m['valid']['bpc']:.4f} bpc, test {m['test']['bpc']:.4f} bpc")
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}

    # Each pruned run (and the unpruned control) from the same dense weights and batches.
    for run in ["dense-ft"] + patterns:
        path = os.path.join(args.out, run + ".json")
        levels = [0.0] if run == "dense-ft" else args.levels
        if load_done(path, settings, levels):
            log(f"{run}: already complete in {path}")
            continue
        model = new_model()
        model.load_state_dict(dense_state)
        torch.manual_seed(args.seed + 2)
        result = {"run": run, "settings": settings, "data": data,
                  "schedule": "per level in order: prune from current weights, fine-tune "
                              f"{args.ft_steps} steps (Adam, cosine {args.ft_lr} -> "
                              f"{args.ft_lr * 0.1}, mask enforced), evaluate",
                  "levels": []}
        step = args.dense_steps
        for level in levels:
            t0 = time.time()
            masks = {}
            if run != "dense-ft":
                with torch.no_grad():
                    for _, p in model.prunable():
                        masks[p] = prune.make_mask(run, p, level, args.bank)
                        p.mul_(masks[p])
            loss = train(model, stream, step, args.ft_steps, args.ft_lr, args.ft_lr * 0.1,
                         args.clip, masks, log=log)
            step += args.ft_steps
            m = measure(model)
            mats = {} if run == "dense-ft" else {
                n: prune.mask_report(run, p, level, args.bank) for n, p in model.prunable()}
            target = 0.0 if run == "dense-ft" else 1.0 - prune.bank_k(level, args.bank) / args.bank
            result["levels"].append({"sparsity": level, "target_sparsity": target,
                                     "train_loss": loss, "seconds": time.time() - t0,
                                     "steps": args.ft_steps, **m, "matrices": mats})
            torch.save(model.state_dict(), os.path.join(args.out, "ckpt", f"{run}_{level}.pt"))
            export(model, os.path.join(args.out, "export", f"{run}_{level}.safetensors"),
                   f"fortunes-{run}-{level}")
            write_json(path + ".partial", result)
            log(f"{run} {level}: valid {m['valid']['bpc']:.4f} bpc, test {m['test']['bpc']:.4f} bpc")
        write_json(path, result)
        os.remove(path + ".partial")

    if not args.no_report:
        report.write(args.out, ["dense", "dense-ft"] + patterns,
                     args.report or os.path.join(args.out, "RESULTS.md"))
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
