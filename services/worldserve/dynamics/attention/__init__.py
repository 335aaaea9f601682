"""Attention for the dynamics models: one interface, two backends.

- :mod:`.backend`: the functions every model calls (:func:`~.backend.attention`,
  :func:`~.backend.attention_varlen`, :func:`~.backend.attention_decode`) and the choice of
  backend (``WORLDSERVE_ATTENTION=auto|triton|sdpa``);
- :mod:`.reference`: the torch SDPA reference of each (the CPU path, and what the kernels are
  tested against);
- :mod:`.kernels`: our Triton kernels (flash prefill, paged decode), imported lazily by the backend.

Imports go one way: backend -> reference, backend -> kernels (lazily), kernels -> reference.
"""
