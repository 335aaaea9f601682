"""Per-session vectors whose values do not depend on the batch: small networks applied row by row.

A CPU matrix product rounds differently with the number of rows it multiplies: MKL takes a
matrix-vector path for one row and size-dependent paths for a few (measured with torch 2.13 on an
x86 CPU: a row's product differs in its last bits at 1, 2 and 3 rows from the same row among many;
with two threads also at 5-7 and 9-11). A session's conditioning vector (its action embedding, say)
computed over its batch's rows therefore depends on how many sessions share the batch, and so do
its frames: a session rebuilt after a cache miss on another replica, whose batch there holds other
sessions, would not get bitwise the frames of its warm twin.

:func:`rowwise` applies such a network to one row at a time, each a fresh (1, K) tensor (aligned
like any new allocation: a view at an odd offset may round differently too), so every row goes
through exactly the same kernel whatever the batch. The cost is one small call per row, for the
per-session networks only (a few microseconds each on CPU); the per-token layers multiply
``frame_tokens`` rows per session and are left batched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def rowwise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to each row of ``x`` (N, ...) alone, as a fresh (1, ...) tensor; the (N, ...)
    results concatenated. Bitwise independent of N and of the other rows."""
    if x.shape[0] == 0:
        return fn(x)
    return torch.cat([fn(x[i : i + 1].clone()) for i in range(x.shape[0])])
