"""The training text: the fortune cookies of Debian's `fortunes` package
(/usr/share/games/fortunes, Debian main, BSD licence, see /usr/share/doc/fortunes/copyright),
normalised to a 96-character vocabulary and split by fortune into train / validation / test
with a fixed seed.

Normalisation (so that every split uses the same closed vocabulary, and 96 = 3 x 32 divides
into balsa's banks and into 4x4 and 16x16 blocks):
- the `%` lines that separate fortunes are removed; each fortune is its own text, ending in
  one newline, and fortunes are joined with an empty line between them;
- overstrike sequences (`x BACKSPACE y`, old terminal bold/underline) keep only `y`;
- a tab becomes one space; every other character outside printable ASCII (bell, the few
  non-ASCII letters and mis-encoded quotes) becomes `?`.
"""
import os
import random
import re

FORTUNE_DIR = "/usr/share/games/fortunes"
# ascii-art holds drawings, not English text.
EXCLUDED = ("ascii-art",)
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
assert len(VOCAB) == 96

_OVERSTRIKE = re.compile(r".\x08", re.DOTALL)


def source_files(directory=FORTUNE_DIR):
    """The plain-text fortune files used, sorted: every regular file in `directory` that is
    not an index (.dat), not a symlink (.u8) and not excluded. Returns [(path, bytes)]."""
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".dat") or os.path.islink(path) or not os.path.isfile(path):
            continue
        if name in EXCLUDED:
            continue
        out.append((path, os.path.getsize(path)))
    return out


def normalise(text):
    """Maps a fortune's text onto VOCAB (see the module comment)."""
    text = _OVERSTRIKE.sub("", text).replace("\t", " ")
    return "".join(c if c in _VOCAB_SET else "?" for c in text)


_VOCAB_SET = frozenset(VOCAB)


def fortunes(directory=FORTUNE_DIR):
    """All fortunes of all source files, in file order, normalised, without empty ones."""
    out = []
    for path, _ in source_files(directory):
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read()
        for block in re.split(r"^%\s*$", raw, flags=re.MULTILINE):
            t = normalise(block.strip("\n"))
            if t.strip():
                out.append(t + "\n")
    return out


def splits(seed=1234, fractions=(0.90, 0.05, 0.05), directory=FORTUNE_DIR):
    """Shuffles the fortunes with `seed` and cuts them into train / validation / test by
    the given fractions. Returns a dict name -> text (fortunes joined by an empty line)
    and the number of fortunes in each split."""
    fs = fortunes(directory)
    random.Random(seed).shuffle(fs)
    n = len(fs)
    n_train = int(round(n * fractions[0]))
    n_val = int(round(n * fractions[1]))
    parts = {"train": fs[:n_train], "valid": fs[n_train:n_train + n_val],
             "test": fs[n_train + n_val:]}
    return ({k: "\n".join(v) for k, v in parts.items()},
            {k: len(v) for k, v in parts.items()})


def encode(text):
    """Character ids of `text` under VOCAB (every character must be in VOCAB)."""
    index = {c: i for i, c in enumerate(VOCAB)}
    return [index[c] for c in text]
