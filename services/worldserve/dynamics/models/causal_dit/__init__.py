"""The Wan2.1-lineage causal video DiT model kind ("causal_dit"): Self-Forcing, CausVid, Matrix-Game 2.0,
LingBot-World. Wan's transformer made block-causal (``network``), run chunk by chunk over a rolling
paged KV cache (``kv``, ``inference``), Wan's causal VAE decoding chunk by chunk (``vae``), served
through the model interface by :class:`~.model.CausalDiTWorldModel` from a published folder
(``config``, ``keymap``) with serve options (``options``)::

    from worldserve.dynamics.models.causal_dit import CausalDiTWorldModel, CausalDiTOptions
"""

from .model import CausalDiTWorldModel
from .options import CausalDiTOptions

__all__ = ["CausalDiTOptions", "CausalDiTWorldModel"]
