"""The dynamics world model: autoencoder, causal latent-frame transformer, few-step sampler.

Public API (the serving engine depends on exactly this)::

    from worldserve.dynamics.model import WorldModel, WorldModelConfig, KVCache
"""

from .config import WorldModelConfig
from .kv_cache import KVCache
from .sampler import noise_seed
from .world_model import WorldModel

__all__ = ["KVCache", "WorldModel", "WorldModelConfig", "noise_seed"]
