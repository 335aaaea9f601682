"""The dynamics world model: autoencoder, causal latent-frame transformer, few-step sampler.

Public API (the serving engine depends on the declared model interface,
``worldserve.dynamics.interface.DynamicsModelProtocol``, which ``WorldModel`` implements)::

    from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig, PagedState
"""

from .config import WorldModelConfig
from .kv_cache import PagedState, PagePool
from .sampler import noise_seed
from .world_model import WorldModel

__all__ = ["PagePool", "PagedState", "WorldModel", "WorldModelConfig", "noise_seed"]
