"""Pruning masks for the study: balanced (balsa's rule, taken from models/tools/balsa_export.py),
unstructured magnitude (per matrix) and block (per matrix, blocks ranked by L2 norm).

Every pattern is given the number of weights to keep as a fraction `keep = k / bank`, the
fraction balanced pruning keeps with k of every `bank` weights, so that all patterns are
compared at the same count of non-zeros. A mask is a bool tensor of the weight's shape.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import balsa_export  # noqa: E402


def bank_k(sparsity, bank):
    """k = round(bank x (1 - sparsity)) clamped to [1, bank]: what `balsa convert` and
    balsa_export.balanced_prune_ keep per bank at a nominal sparsity."""
    return max(1, min(bank, int(round(bank * (1.0 - sparsity)))))


def balanced_mask(weight, sparsity, bank):
    """Mask of balsa's balanced pruning of `weight` (k largest |w| per bank, ties to the lower
    column), computed by balsa_export.balanced_prune_ itself on a copy of |w|. A kept weight
    that is exactly 0 would read as pruned; mask_report's per-bank count catches that (the
    study's weights are never 0 where kept)."""
    probe = weight.detach().abs().clone()
    balsa_export.balanced_prune_(probe, sparsity, bank)
    return probe != 0


def unstructured_mask(weight, keep):
    """Keeps the round(numel x keep) largest |w| of the matrix (ties to the lower flat index)."""
    flat = weight.detach().abs().reshape(-1)
    n = int(round(flat.numel() * keep))
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:n]] = True
    return mask.reshape(weight.shape)


def block_mask(weight, keep, block):
    """Tiles the matrix with block x block tiles (partial tiles at the edges count as tiles)
    and keeps the round(ntiles x keep) tiles of largest L2 norm (ties to the lower tile)."""
    rows, cols = weight.shape
    br, bc = -(-rows // block), -(-cols // block)
    padded = torch.zeros(br * block, bc * block, dtype=torch.float64)
    padded[:rows, :cols] = weight.detach().double()
    norms = padded.reshape(br, block, bc, block).pow(2).sum(dim=(1, 3)).reshape(-1)
    n = int(round(norms.numel() * keep))
    order = torch.sort(norms, descending=True, stable=True).indices
    tiles = torch.zeros(br * bc, dtype=torch.bool)
    tiles[order[:n]] = True
    full = tiles.reshape(br, 1, bc, 1).expand(br, block, bc, block).reshape(br * block, bc * block)
    return full[:rows, :cols].clone()


def make_mask(pattern, weight, sparsity, bank=32):
    """The mask of `pattern` ("balanced", "unstructured", "block4", "block16") at nominal
    `sparsity`; non-balanced patterns keep the same fraction k/bank as balanced does."""
    keep = bank_k(sparsity, bank) / bank
    if pattern == "balanced":
        return balanced_mask(weight, sparsity, bank)
    if pattern == "unstructured":
        return unstructured_mask(weight, keep)
    if pattern.startswith("block"):
        return block_mask(weight, keep, int(pattern[len("block"):]))
    raise ValueError(f"unknown pruning pattern {pattern!r}")


def mask_report(pattern, weight, sparsity, bank=32):
    """Measured structure of a pruned weight: non-zeros, measured and target sparsity; for
    balanced the smallest and largest non-zero count of any bank (both k when exact); for
    blocks the number of tiles, of tiles to keep and of tiles holding a non-zero."""
    rows, cols = weight.shape
    nz = int((weight != 0).sum())
    k = bank_k(sparsity, bank)
    r = {"shape": [rows, cols], "nonzeros": nz, "sparsity": 1.0 - nz / (rows * cols),
         "target_sparsity": 1.0 - k / bank}
    if pattern == "balanced":
        nb = -(-cols // bank)
        padded = torch.zeros(rows, nb * bank)
        padded[:, :cols] = weight.detach()
        per_bank = (padded.reshape(rows, nb, bank) != 0).sum(dim=2)
        r.update(bank=bank, k=k, bank_nonzeros_min=int(per_bank.min()),
                 bank_nonzeros_max=int(per_bank.max()))
    elif pattern.startswith("block"):
        b = int(pattern[len("block"):])
        br, bc = -(-rows // b), -(-cols // b)
        padded = torch.zeros(br * b, bc * b)
        padded[:rows, :cols] = weight.detach()
        per_tile = (padded.reshape(br, b, bc, b) != 0).sum(dim=(1, 3))
        r.update(block=b, tiles=br * bc, tiles_target=int(round(br * bc * k / bank)),
                 tiles_nonzero=int((per_tile > 0).sum()))
    return r
