"""The scroll-canvas world model: pixel-space next-frame prediction with a world-coordinate memory.

See :mod:`worldserve.dynamics.models.canvas.model`.
"""

from .model import CanvasConfig, CanvasState, CanvasWorldModel

__all__ = ["CanvasConfig", "CanvasState", "CanvasWorldModel"]
