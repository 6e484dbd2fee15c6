"""Perplexity over non-overlapping windows (the paper's protocol).

Each window of ``seqlen`` tokens is scored independently (no context carried over):
ppl = exp(Σ NLL / Σ predicted tokens), with seqlen − 1 predictions per window.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1, show_progress: bool = True) -> dict[str, Any]:
    """windows (N, S) token ids -> {"ppl": float, "n_tokens": int, "n_windows": int}."""
    device = next(model.parameters()).device
    nll = 0.0
    count = 0
    for batch in tqdm(windows.split(batch_size), desc="perplexity", disable=not show_progress, leave=False):
        batch = batch.to(device)
        logits = model(batch, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        nll += float(loss)
        count += batch[:, 1:].numel()
    return {"ppl": math.exp(nll / count), "n_tokens": count, "n_windows": int(windows.shape[0])}
