"""Export PyTorch embedding/LSTM/Linear networks for `balsa convert`, and the same
balanced pruning on the PyTorch side.

Run with Debian's /usr/bin/python3 (python3-torch); no safetensors package needed: the
file is written by hand (8-byte little-endian header length, JSON header, raw data).

    import torch, balsa_export as bx
    emb, lstm, fc = torch.nn.Embedding(1000, 64), torch.nn.LSTM(64, 128, 2), torch.nn.Linear(128, 1000)
    bx.export("dense.safetensors", embedding=emb, lstm=lstm, fc=[(fc, "none")], head="softmax",
              name="demo")
    # then: balsa convert dense.safetensors -o model.safetensors --sparsity 0.9 --bank 32

The exported file holds the tensors under balsa's names (embedding.weight,
lstm.weight_ih_l0, ..., fc.<i>.weight / fc.<i>.bias for the i-th Linear) and the network
description in its __metadata__ under "balsa", which `balsa convert` reads when no
--desc is given.
"""
import json
import struct

import torch

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.uint8: "U8"}


def write_safetensors(path, tensors, metadata=None):
    """Writes tensors (name -> torch.Tensor) in the given order, with string metadata."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} not supported")
        # bytes of the tensor as stored in memory (little-endian on every machine we run)
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Reads a safetensors file back: (dict name -> torch.Tensor, metadata dict)."""
    rev = {v: k for k, v in _DTYPES.items()}
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        b, en = e["data_offsets"]
        buf = bytearray(data[b:en])
        t = torch.frombuffer(buf, dtype=rev[e["dtype"]]) if buf else torch.empty(0, dtype=rev[e["dtype"]])
        out[name] = t.reshape(e["shape"])
    return out, meta


def balanced_prune_(weight, sparsity=0.9, bank=32):
    """Prunes a 2-D weight in place the way balsa does: every row is split into banks of
    `bank` columns (the last zero-padded) and each bank keeps its k = round(bank * (1 -
    sparsity)) (at least 1) largest |w|; ties go to the lower column. Returns the weight."""
    k = max(1, min(bank, int(round(bank * (1.0 - sparsity)))))
    with torch.no_grad():
        rows, cols = weight.shape
        nb = (cols + bank - 1) // bank
        padded = torch.zeros(rows, nb * bank, dtype=weight.dtype)
        padded[:, :cols] = weight
        mag = padded.abs().reshape(rows, nb, bank)
        # a stable descending sort keeps equal magnitudes in column order: lower wins
        order = torch.sort(mag, dim=2, descending=True, stable=True).indices
        mask = torch.zeros_like(mag, dtype=torch.bool)
        mask.scatter_(2, order[:, :, :k], True)
        keep = mask.reshape(rows, nb * bank)[:, :cols]
        weight.mul_(keep.to(weight.dtype))
    return weight


def prune_network_(lstm=None, fc=(), sparsity=0.9, bank=32, keep_dense=()):
    """Applies balanced_prune_ to every LSTM and Linear weight (not biases, not the
    embedding), as `balsa convert --sparsity S --bank B` does; names in keep_dense (balsa
    names such as "fc.1.weight") stay dense."""
    for name, w in _weights(lstm, fc):
        if name not in keep_dense:
            balanced_prune_(w, sparsity, bank)


def _weights(lstm, fc):
    if lstm is not None:
        for name, p in lstm.named_parameters():
            if name.startswith("weight_"):
                yield "lstm." + name, p
    for i, layer in enumerate(fc):
        lin = layer[0] if isinstance(layer, (tuple, list)) else layer
        yield f"fc.{i}.weight", lin.weight


def describe(embedding=None, lstm=None, fc=(), head="none", name="", input_size=None):
    """The network description (models/FORMAT.md) of embedding -> lstm -> fc -> head.
    fc is a list of (nn.Linear, activation) with activation none/relu/tanh/sigmoid."""
    d = {"format_version": 1, "name": name}
    if embedding is not None:
        d["input"] = "tokens"
        d["vocab_size"] = embedding.num_embeddings
        d["input_size"] = embedding.embedding_dim
    else:
        d["input"] = "vectors"
        if input_size is None:
            input_size = lstm.input_size if lstm is not None else _linear(fc[0]).in_features
        d["input_size"] = input_size
    if lstm is not None:
        if getattr(lstm, "proj_size", 0):
            raise ValueError("LSTM with proj_size is not supported")
        d.update(hidden_size=lstm.hidden_size, num_layers=lstm.num_layers,
                 bidirectional=bool(lstm.bidirectional), lstm_bias=bool(lstm.bias))
    d["fc"] = [{"out": _linear(l).out_features, "activation": _act(l),
                "bias": _linear(l).bias is not None} for l in fc]
    d["head"] = head
    return d


def _linear(layer):
    return layer[0] if isinstance(layer, (tuple, list)) else layer


def _act(layer):
    return layer[1] if isinstance(layer, (tuple, list)) else "none"


def export(path, embedding=None, lstm=None, fc=(), head="none", name="", input_size=None,
           dtype=torch.float32):
    """Writes the network's weights under balsa's names plus its description (in the
    __metadata__ entry "balsa") to a safetensors file that `balsa convert` reads."""
    t = {}
    if embedding is not None:
        t["embedding.weight"] = embedding.weight
    if lstm is not None:
        for pname, p in lstm.named_parameters():
            t["lstm." + pname] = p
    for i, layer in enumerate(fc):
        lin = _linear(layer)
        t[f"fc.{i}.weight"] = lin.weight
        if lin.bias is not None:
            t[f"fc.{i}.bias"] = lin.bias
    t = {k: v.detach().to(dtype) for k, v in t.items()}
    desc = describe(embedding, lstm, fc, head, name, input_size)
    write_safetensors(path, t, {"balsa": json.dumps(desc)})
    return desc
