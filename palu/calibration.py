"""Calibration statistics (paper Sec. 3.2-3.3): input Grams for whitening, Fisher scores for rank search.

Both are *return values* computed with accumulator objects fed by hooks; nothing is
stashed on the model. Grams are summed in float64, one per layer (k_proj and v_proj
read the same normalized hidden states).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .adapters import get_adapter

logger = logging.getLogger(__name__)


class GramAccumulator:
    """Σ xᵀx over tokens for inputs x (..., d); GPTQ-style ``add_batch`` then ``finalize``."""

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.n_tokens = 0

    def add_batch(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).to(self.gram.device, torch.float64)
        self.gram.addmm_(flat.T, flat)
        self.n_tokens += flat.shape[0]

    def finalize(self) -> torch.Tensor:
        if self.n_tokens == 0:
            raise RuntimeError("no calibration tokens reached this layer")
        return self.gram


def _batches(windows: torch.Tensor, desc: str, verbose: bool):
    return tqdm(windows.split(1), desc=desc, disable=not verbose, leave=False)


@torch.no_grad()
def collect_grams(model: nn.Module, windows: torch.Tensor, verbose: bool = False) -> dict[int, torch.Tensor]:
    """Per-layer input Gram of the k/v projections.

    Args:
        windows: (N, S) token ids, run one window at a time.
    Returns:
        layer index -> (d_model, d_model) float64 Gram.
    """
    adapter = get_adapter(model.config)
    device = next(model.parameters()).device
    accs: dict[int, GramAccumulator] = {}
    handles = []
    for idx, layer in enumerate(adapter.layers(model)):
        k_proj = getattr(getattr(layer, adapter.attention_attr), adapter.k_proj)
        accs[idx] = GramAccumulator(k_proj.in_features, device)
        handles.append(k_proj.register_forward_pre_hook(_pre_hook(accs[idx].add_batch)))
    try:
        for batch in _batches(windows, "whitening grams", verbose):
            model(batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {idx: acc.finalize() for idx, acc in accs.items()}


def _pre_hook(fn: Callable[[torch.Tensor], None]):
    def hook(module, args):
        fn(args[0])

    return hook


def collect_fisher(
    model: nn.Module, windows: torch.Tensor, verbose: bool = False, group_rows: int | None = None
) -> dict[str, dict[tuple[int, str], torch.Tensor]]:
    """Diagonal empirical Fisher information of the k/v projections, from one backward pass per window.

    Returns ``{"weight": ..., "output": ...}``, each keyed by (layer index, "k" | "v"):
      * ``weight``: (out_features,) float64, Σ_windows Σ_in (∂L/∂W)² per output row (paper's rank search);
      * ``output``: (out_features,) float64, Σ_tokens (∂L/∂y)² per output channel y = Wx — how much the
        loss cares about each key/value channel; used to weight the decomposition and the sensitivity search;
      * ``output_cov`` (only with ``group_rows``): (G, rows, rows) float64, Σ_tokens g gᵀ of the output gradient
        within each head group — the output factor of a K-FAC (Kronecker-factored) Fisher approximation.
    """
    adapter = get_adapter(model.config)
    device = next(model.parameters()).device
    targets: dict[tuple[int, str], nn.Linear] = {}
    for idx, layer in enumerate(adapter.layers(model)):
        attn = getattr(layer, adapter.attention_attr)
        targets[(idx, "k")] = getattr(attn, adapter.k_proj)
        targets[(idx, "v")] = getattr(attn, adapter.v_proj)
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    weight = {key: torch.zeros(lin.out_features, dtype=torch.float64, device=device) for key, lin in targets.items()}
    output = {key: torch.zeros(lin.out_features, dtype=torch.float64, device=device) for key, lin in targets.items()}
    cov = {}
    if group_rows is not None:
        cov = {key: torch.zeros(lin.out_features // group_rows, group_rows, group_rows, dtype=torch.float64, device=device)
               for key, lin in targets.items()}
    handles = [lin.register_forward_hook(_output_grad_hook(output[key], cov.get(key))) for key, lin in targets.items()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for lin in targets.values():
            lin.weight.requires_grad_(True)
        for batch in _batches(windows, "fisher", verbose):
            batch = batch.to(device)
            loss = model(batch, labels=batch, use_cache=False).loss
            loss.backward()
            for key, lin in targets.items():
                weight[key] += lin.weight.grad.double().pow(2).sum(1)
                lin.weight.grad = None
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
    out = {"weight": weight, "output": output}
    if cov:
        out["output_cov"] = cov
    return out


def _output_grad_hook(acc: torch.Tensor, cov: torch.Tensor | None = None):
    def accumulate(grad: torch.Tensor) -> None:  # returns None: the gradient itself is left untouched
        flat = grad.detach().double().flatten(0, -2)  # (N, out)
        acc.add_(flat.pow(2).sum(0))
        if cov is not None:
            blocks = flat.view(flat.shape[0], cov.shape[0], cov.shape[1])  # (N, G, rows)
            cov.add_(torch.einsum("ngr,ngs->grs", blocks, blocks))

    def hook(module, args, out):
        if out.requires_grad:
            out.register_hook(accumulate)

    return hook
