"""Custom Triton attention kernels of the dynamics model.

- :mod:`.flash_prefill` -- fused flash attention (online softmax, fp32 accumulation) for padded
  batches (:func:`flash_attention`) and ragged packed batches in one launch
  (:func:`flash_attention_varlen`); full, causal and frame-block-causal masks, fully masked key
  blocks skipped; optional fused QK RMSNorm + RoPE on load.
- :mod:`.flash_decode` -- one new frame of queries against a KV cache of uneven lengths plus the
  new frame, writing the new keys/values into the cache (:func:`flash_decode`).
- :mod:`.aot` -- ahead-of-time compile gate (every variant for sm_90 and sm_80, on CPU).
- :mod:`._common` -- shared jit helpers, configs, the prologue's torch reference.

The model never imports these directly: ``worldserve.dynamics.attention.backend`` dispatches to
them (CUDA tensors, or forced with ``use_backend("triton")``). Nothing is imported here on
purpose: ``triton.jit`` decides at import time whether kernels compile or run in the CPU
interpreter (``TRITON_INTERPRET=1``), so the kernel modules are imported lazily, on first use.
"""
