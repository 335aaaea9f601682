"""Training of the default models on the procedural platformer, and their fidelity evaluation.

python -m worldserve.train all                 # data -> autoencoder -> dynamics -> caption decoder (resumable)
python -m worldserve.train export              # copy the trained models to worldserve/weights/
python -m worldserve.train canvas              # the scroll-canvas dynamics model (work in progress)
python -m worldserve.train.evaluate            # the fidelity table (also: python -m worldserve.train evaluate)
"""

from .trainer import DYNAMICS_CONFIG, IMAGE_CONFIG, PhaseConfig, TrainConfig, export, train_all

__all__ = ["DYNAMICS_CONFIG", "IMAGE_CONFIG", "PhaseConfig", "TrainConfig", "export", "train_all"]
