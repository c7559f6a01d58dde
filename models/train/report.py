"""Writes RESULTS.md and bpc.png (gnuplot) from the run JSONs that study.py leaves in a
results folder. Runs that have not finished are read from their .json.partial file and
marked as partial.

    /usr/bin/python3 models/train/report.py [results-folder [RESULTS.md path [follow-up folders]]]

The paper's claims are checked on per-character perplexity (2^BPC), the quantity the paper's
"perplexity" corresponds to: balanced within 2% of dense at 80% and within 5% at 90%, and
no more than 2% worse than unstructured at any level.
"""
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import prune  # noqa: E402

RUN_LABELS = {"dense": "dense", "dense-ft": "dense + same fine-tuning, unpruned",
              "balanced": "balanced (bank 32)", "unstructured": "unstructured (per matrix)",
              "block4": "block 4x4 (L2)", "block16": "block 16x16 (L2)"}
PATTERNS = ("balanced", "unstructured", "block4", "block16")


def load(out, runs):
    """run -> (result dict, partial flag) for every run with a JSON in `out`."""
    got = {}
    for run in runs:
        for suffix, partial in ((".json", False), (".json.partial", True)):
            path = os.path.join(out, run + suffix)
            if os.path.exists(path):
                with open(path) as f:
                    got[run] = (json.load(f), partial)
                break
    return got


def _fmt_level(s):
    return f"{100 * s:g}%"


def _rel(a, b):
    return 100.0 * (a / b - 1.0)


def _plot(out, got, png_path):
    """png_path: test BPC against actual sparsity, one line per pattern, dense as a level line.
    Returns the file name, or None when gnuplot is missing."""
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        return None
    dense = got["dense"][0]["levels"][0]["test"]["bpc"]
    plots = []
    for run in PATTERNS:
        if run not in got or not got[run][0]["levels"]:
            continue
        dat = os.path.join(out, f"plot_{run}.dat")
        with open(dat, "w") as f:
            for lv in got[run][0]["levels"]:
                f.write(f"{100 * lv['target_sparsity']} {lv['test']['bpc']}\n")
        plots.append(f"'{dat}' using 1:2 with linespoints lw 2 title '{RUN_LABELS[run]}'")
    plots.append(f"{dense} with lines dt 2 lc rgb 'black' title 'dense'")
    script = "\n".join([
        "set terminal pngcairo size 900,560 font 'sans,11'",
        f"set output '{png_path}'",
        "set title 'Character LSTM on Debian fortunes: test bits per character after pruning'",
        "set xlabel 'sparsity of LSTM and output weights (%)'",
        "set ylabel 'test bits per character (lower is better)'",
        "set key top left", "set grid", "set xrange [45:97]",
        "plot " + ", ".join(plots), ""])
    subprocess.run([gnuplot], input=script.encode(), check=True)
    for run in PATTERNS:
        dat = os.path.join(out, f"plot_{run}.dat")
        if os.path.exists(dat):
            os.remove(dat)
    return os.path.basename(png_path)


def _structure_ok(run, lv):
    """True when every matrix of the level has exactly its target sparsity (balanced: exactly
    k non-zeros in every bank; blocks: exactly the target number of tiles kept)."""
    for m in lv["matrices"].values():
        rows, cols = m["shape"]
        if run.startswith("block"):
            # edge tiles may be partial, so the count of kept tiles is what is exact
            if m["tiles_nonzero"] != m["tiles_target"]:
                return False
            continue
        if m["nonzeros"] != round(rows * cols * (1.0 - m["target_sparsity"])):
            return False
        if run == "balanced" and not (m["bank_nonzeros_min"] == m["bank_nonzeros_max"] == m["k"]):
            return False
    return True


def _tables(got, st, dense):
    """The test and validation tables (and the dense-ft control line) of one study."""
    L = []
    for split, title in (("test", "Test"), ("valid", "Validation")):
        L.append(f"{title} bits per character (per-character perplexity in brackets):\n")
        cols = [r for r in PATTERNS if r in got]
        L.append("| sparsity (nominal -> actual) | " + " | ".join(RUN_LABELS[r] for r in cols) + " |")
        L.append("|---" * (len(cols) + 1) + "|")
        d = dense[split]
        L.append("| 0% (dense) | " + " | ".join(f"{d['bpc']:.4f} ({d['ppl']:.3f})" for _ in cols) + " |")
        for i, v in enumerate(st["levels"]):
            cells = []
            actual = None
            for r in cols:
                lvs = got[r][0]["levels"]
                if i < len(lvs):
                    actual = lvs[i]["target_sparsity"]
                    cells.append(f"{lvs[i][split]['bpc']:.4f} ({lvs[i][split]['ppl']:.3f})")
                else:
                    cells.append("—")
            head = _fmt_level(v) + (f" -> {_fmt_level(actual)}" if actual is not None else "")
            L.append(f"| {head} | " + " | ".join(cells) + " |")
        L.append("")
    if "dense-ft" in got:
        c = got["dense-ft"][0]["levels"][0]
        L.append(f"Control dense-ft (dense + {st['ft_steps']} more steps, unpruned): test "
                 f"{c['test']['bpc']:.4f} BPC, validation {c['valid']['bpc']:.4f} BPC.\n")

    return L


def _claims(got, st, dense):
    """The paper's three claims checked on one study's balanced and unstructured runs."""
    L = []
    bal = got.get("balanced", ({"levels": []}, False))[0]["levels"]
    uns = got.get("unstructured", ({"levels": []}, False))[0]["levels"]
    for level, bound in ((0.8, 2.0), (0.9, 5.0)):
        i = st["levels"].index(level) if level in st["levels"] else None
        if i is None or i >= len(bal):
            L.append(f"- Balanced within {bound:g}% of dense at {_fmt_level(level)}: not measured.")
            continue
        rt = _rel(bal[i]["test"]["ppl"], dense["test"]["ppl"])
        rv = _rel(bal[i]["valid"]["ppl"], dense["valid"]["ppl"])
        ok = "holds" if rt <= bound and rv <= bound else "does NOT hold"
        L.append(f"- Balanced within {bound:g}% of dense at {_fmt_level(level)} (actual "
                 f"{_fmt_level(bal[i]['target_sparsity'])}): {rt:+.2f}% / {rv:+.2f}% -> {ok}.")
    worst = []
    for i in range(min(len(bal), len(uns))):
        worst.append((_rel(bal[i]["test"]["ppl"], uns[i]["test"]["ppl"]),
                      _rel(bal[i]["valid"]["ppl"], uns[i]["valid"]["ppl"]), st["levels"][i]))
    if worst:
        diffs = ", ".join(f"{_fmt_level(v)}: {t:+.2f}% / {va:+.2f}%" for t, va, v in worst)
        ok = "holds" if all(t <= 2.0 and va <= 2.0 for t, va, _ in worst) else "does NOT hold"
        L.append(f"- Balanced no more than 2% worse than unstructured at any level: {diffs} -> {ok}.")
    L.append("")

    return L


def _extra(folder, runs, main_st):
    """The section of a follow-up study in `folder` (study.py --dense-from: the same dense
    model, other fine-tuning settings), or a line saying it is missing."""
    got = load(folder, runs)
    name = os.path.relpath(folder, os.path.join(HERE, "..", ".."))
    if "dense" not in got:
        return [f"Follow-up study {name}: no results.\n"]
    st = got["dense"][0]["settings"]
    dense = got["dense"][0]["levels"][0]
    pats = [r for r in PATTERNS if r in got]
    partial = [r for r in pats if got[r][1]]
    L = [f"## Follow-up: {st['ft_steps']} fine-tuning steps per level\n",
         f"Why the gaps: is it the fine-tuning budget? The same dense model, patterns "
         f"{', '.join(pats)}, levels {', '.join(_fmt_level(v) for v in st['levels'])} in this order, "
         f"{st['ft_steps']} fine-tuning steps per level ({st['ft_steps'] / main_st['ft_steps']:g}x "
         f"the main study's), everything else as above. Results in `{name}/`; rerun with "
         f"`nice -n 19 /usr/bin/python3 models/train/study.py --out {name} --dense-from "
         f"models/train/results --ft-steps {st['ft_steps']} --levels "
         f"{','.join(f'{v:g}' for v in st['levels'])} --patterns {','.join(pats)} --no-report` "
         f"and then `/usr/bin/python3 models/train/report.py models/train/results "
         f"models/train/RESULTS.md {name}`.\n"]
    if partial:
        L.append(f"**Partial**: {', '.join(partial)} did not finish.\n")
    if not pats:
        return L + ["No pruned run has finished a level yet.\n"]
    L += _tables(got, st, dense)
    L.append("Claims on this follow-up (per-character perplexity, test / validation):\n")
    L += _claims(got, st, dense)
    return L


def _empty_lines(out, st):
    """How much of each matrix the patterns cut off entirely, from the exported weights in
    out/export (present after a study has run; the section is left out without them):
    gate rows of weight_ih / weight_hh with no weight left (that gate gets only its bias)
    and hidden units the output layer no longer reads."""
    names = ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc.0.weight")
    rows = []
    for run in PATTERNS:
        for v in st["levels"]:
            path = os.path.join(out, "export", f"{run}_{v}.safetensors")
            if not os.path.exists(path):
                continue
            t, _ = prune.balsa_export.read_safetensors(path)
            if any(n not in t for n in names):
                continue
            ih, hh, fc = (t[n] != 0 for n in names)
            rows.append(f"| {RUN_LABELS[run]} | {_fmt_level(v)} | {int((ih.sum(1) == 0).sum())} of "
                        f"{ih.shape[0]} | {int((hh.sum(1) == 0).sum())} of {hh.shape[0]} | "
                        f"{int((fc.sum(0) == 0).sum())} of {fc.shape[1]} |")
    if not rows:
        return []
    return ["## What each pattern cuts off\n",
            "Counted in the exported weights after each level (`results/export`, written by the "
            "study): LSTM gate rows left with no input weight (weight_ih) or no recurrent weight "
            "(weight_hh) at all, and hidden units that the output layer no longer reads. Balanced "
            "pruning keeps k weights in every bank of every row, so it never empties a row.\n",
            "| pattern | level | empty weight_ih rows | empty weight_hh rows | unread hidden units |",
            "|---|---|---|---|---|", *rows, ""]


def _discussion(got, st, dense_run, extra_got):
    """Why the numbers come out as they do, from the runs' own figures."""
    dense = dense_run["levels"][0]
    train_bits = dense["train_loss"] / math.log(2)
    chars_per_step = st["batch"] * st["seq"]
    epoch = dense_run["data"]["chars"]["train"]
    L = ["## Why (read from the numbers above)\n"]
    L.append(f"- **The model has no spare capacity.** The dense model's training loss over its last "
             f"10% of steps, {train_bits:.3f} bits per character, is only "
             f"{dense['valid']['bpc'] - train_bits:.3f} below its validation BPC "
             f"{dense['valid']['bpc']:.3f}: after {st['dense_steps'] * chars_per_step / epoch:.1f} "
             f"epochs it does not over-fit at all: it is limited by its size and training time, so every "
             f"weight carries signal. It has "
             f"{dense_run['params']} parameters; the paper's PTB model (2 x 1500 LSTM, vocabulary "
             f"10 000) has about 66 million, whose redundancy is what lets 80-90% of them go "
             f"almost for free.")
    ctl = (got["dense-ft"][0]["levels"][0]["test"]["bpc"] - dense["test"]["bpc"]) if "dense-ft" in got else 0.0
    L.append(f"- **Little fine-tuning per level.** {st['ft_steps']} steps x {chars_per_step} "
             f"characters = {100 * st['ft_steps'] * chars_per_step / epoch:.0f}% of an epoch per "
             f"level. The unpruned control changes test BPC by {ctl:+.3f} with the same steps "
             f"(dense-ft above), so the gaps are pruning damage that this budget does not repair.")
    bal = got.get("balanced", ({"levels": []}, False))[0]["levels"]
    uns = got.get("unstructured", ({"levels": []}, False))[0]["levels"]
    both = range(min(len(bal), len(uns)))
    better = [st["levels"][i] for i in both if bal[i]["test"]["bpc"] < uns[i]["test"]["bpc"]]
    worse = [st["levels"][i] for i in both if bal[i]["test"]["bpc"] >= uns[i]["test"]["bpc"]]
    if better:
        L.append(f"- **Balanced beats unstructured at {', '.join(_fmt_level(v) for v in better)}.** "
                 "Per-matrix unstructured pruning empties whole gate rows and starves some hidden "
                 "units as sparsity rises (table below), while balanced pruning keeps every row "
                 "alive by construction."
                 + (f" At {', '.join(_fmt_level(v) for v in worse)} unstructured pruning's freedom "
                    "to keep the largest weights wherever they are wins." if worse else ""))
    for folder, g in extra_got:
        b2 = g.get("balanced", ({"levels": []}, False))[0]["levels"]
        s2 = g["dense"][0]["settings"] if "dense" in g else None
        if not s2 or not b2:
            continue
        pairs = []
        for i, v in enumerate(s2["levels"][:len(b2)]):
            if v in st["levels"] and st["levels"].index(v) < len(bal):
                pairs.append(f"{_fmt_level(v)}: {bal[st['levels'].index(v)]['test']['bpc']:.3f} -> "
                             f"{b2[i]['test']['bpc']:.3f}")
        u2 = g.get("unstructured", ({"levels": []}, False))[0]["levels"]
        diffs = [(s2["levels"][i], b2[i]["test"]["bpc"] - u2[i]["test"]["bpc"])
                 for i in range(min(len(b2), len(u2)))]
        lead = [f"{_fmt_level(v)}: {d:+.3f}" for v, d in diffs]
        why = ("unstructured pruning recovers from its emptied rows with longer fine-tuning"
               if diffs and all(d > 0 for _, d in diffs) else "compare with the main study")
        if pairs:
            L.append(f"- **More fine-tuning narrows the gap to dense.** Balanced test BPC with "
                     f"{st['ft_steps']} -> {s2['ft_steps']} steps per level: {'; '.join(pairs)} "
                     f"(dense {dense['test']['bpc']:.3f}; follow-up section above)."
                     + (f" With that budget, balanced minus unstructured test BPC is "
                        f"{'; '.join(lead)}: {why}." if lead else ""))
    L.append("")
    return L


def write(out, runs, md_path, extra=()):
    """Writes the report to md_path, and its plot to bpc.png beside it, from the runs' JSON
    files in `out`, with one section per follow-up results folder in `extra`. Raises
    RuntimeError when there is no dense run."""
    got = load(out, runs)
    if "dense" not in got:
        raise RuntimeError(f"no dense.json in {out}: run study.py first")
    dense_run = got["dense"][0]
    st, data = dense_run["settings"], dense_run["data"]
    dense = dense_run["levels"][0]
    png = _plot(out, got, os.path.join(os.path.dirname(os.path.abspath(md_path)), "bpc.png"))
    L = []
    L.append("# Balance-aware pruning of a character-level LSTM language model\n")
    L.append("Written by `models/train/report.py` from the JSON files in this folder "
             f"({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {platform.node() or 'host'}, "
             f"Python {platform.python_version()}).\n")
    L.append("Reproduce: `make train` (the main study, `nice -n 19 /usr/bin/python3 "
             "models/train/study.py --out models/train/results`, then the follow-up study and "
             "this report; one thread; a restart skips the runs already complete). The 90% "
             "balanced model of the follow-up study is balsa's trained example model, "
             "models/fortunes/ (balsa's output equals PyTorch's on it: tests/test_fortunes.c, "
             "models/train/balsa_check.py).\n")
    missing = [r for r in ["dense-ft", *PATTERNS] if r not in got]
    partial = [r for r, (_, p) in got.items() if p]
    if missing or partial:
        L.append(f"**Incomplete study**: missing {missing or 'none'}, partial {partial or 'none'}.\n")

    L.append("## Data\n")
    L.append("Debian's `fortunes` package (Debian main; BSD licence of the Regents of the "
             "University of California, with per-file notes, in /usr/share/doc/fortunes/copyright), "
             "/usr/share/games/fortunes: every plain-text file (no .dat index, no .u8 link) except "
             "`ascii-art` (drawings):\n")
    L.append(", ".join(f"`{os.path.basename(f['path'])}` ({f['bytes']} B)" for f in data["files"])
             + f" — {len(data['files'])} files, {sum(f['bytes'] for f in data['files'])} bytes.\n")
    fc, ch = data["fortunes"], data["chars"]
    L.append(f"Fortunes split at the `%` lines, normalised to 96 characters (newline + printable "
             f"ASCII; tab -> space, overstrike `x\\by` -> `y`, other characters -> `?`), shuffled "
             f"with seed {st['split_seed']} and cut 90/5/5 by fortune: train {fc['train']} fortunes "
             f"({ch['train']} characters used), validation {fc['valid']} ({ch['valid']}), "
             f"test {fc['test']} ({ch['test']}).\n")

    L.append("## Model and training\n")
    L.append(f"- Embedding {st['emb']} (dense, never pruned) -> {st['layers']}-layer LSTM, hidden "
             f"{st['hidden']} -> linear to 96 logits; {dense_run['params']} parameters; seed {st['seed']}.")
    L.append(f"- Truncated BPTT, {st['batch']} streams x {st['seq']} characters per step, state "
             f"carried between steps; Adam, gradient norm clipped at {st['clip']}; one thread.")
    L.append(f"- Dense: {st['dense_steps']} steps, learning rate {st['lr']} on a cosine to "
             f"{st['lr'] * 0.05:g}.")
    L.append(f"- Pruning schedule, the same for every pattern, from the same dense weights with "
             f"the same batches: levels {', '.join(_fmt_level(v) for v in st['levels'])} in this "
             f"order; at each, prune LSTM weight_ih / weight_hh and the output weight from the "
             f"current weights, fine-tune {st['ft_steps']} steps (fresh Adam, {st['ft_lr']} on a "
             f"cosine to {st['ft_lr'] * 0.1:g}, mask applied to gradients and re-applied after "
             f"every step), evaluate. {len(st['levels']) * st['ft_steps']} fine-tuning steps per "
             f"pattern in all.")
    actual_levels = ", ".join(
        f"{_fmt_level(v)} -> {_fmt_level(1 - prune.bank_k(v, st['bank']) / st['bank'])}"
        for v in st["levels"])
    L.append(f"- Balanced: banks of {st['bank']} columns, each keeps k = round({st['bank']} x "
             f"(1 - s)) largest |w|, ties to the lower column (models/tools/balsa_export.py, the "
             f"rule of `balsa convert`). So the nominal level s is reached as 1 - k/{st['bank']}: "
             f"{actual_levels}. "
             f"Unstructured and block pruning keep the same number of weights per matrix as "
             f"balanced does (equal non-zero counts).")
    L.append("- Unstructured: per matrix, the largest |w|. Block: per matrix, 4x4 or 16x16 tiles "
             "ranked by L2 norm.")
    L.append(f"- Evaluation: whole validation / test split, {st['eval_streams']} contiguous pieces "
             f"read from a zero state; bits per character (BPC) and per-character perplexity "
             f"2^BPC. An extra control, *dense-ft*, fine-tunes the dense model {st['ft_steps']} "
             f"more steps without pruning.\n")

    L.append("## Results\n")
    if png:
        L.append(f"![test BPC against sparsity]({png})\n")
    L += _tables(got, st, dense)
    L.append("## The paper's claims, checked (per-character perplexity, test / validation)\n")
    L.append("Relative change of per-character perplexity 2^BPC (a 2% change is 0.029 BPC), "
             "against the dense baseline.\n")
    L += _claims(got, st, dense)
    for folder in extra:
        L += _extra(folder, runs, st)
    L += _discussion(got, st, dense_run, [(f, load(f, runs)) for f in extra])
    L += _empty_lines(out, st)
    L.append("## Structure check\n")
    L.append("Measured from the saved weights after each level's fine-tuning (JSON `matrices`): ")
    checks = []
    for r in PATTERNS:
        if r in got:
            lvs = got[r][0]["levels"]
            good = sum(_structure_ok(r, lv) for lv in lvs)
            checks.append(f"{r}: {good} of {len(lvs)} levels exact")
    L.append("; ".join(checks) + ". Exact means every pruned matrix has exactly the target "
             "number of non-zeros (blocks: of kept tiles), and for balanced exactly k in every bank.\n")
    secs = sum(lv["seconds"] for r in got.values() for lv in r[0]["levels"])
    L.append(f"Total time of the runs: {secs / 60:.1f} min (one thread, nice 19, on a shared "
             "2-core machine).\n")
    with open(md_path, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results")
    md = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "RESULTS.md")
    write(folder, ["dense", "dense-ft", *PATTERNS], md, sys.argv[3:])
