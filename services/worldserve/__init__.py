"""worldserve: serving cluster for interactive generative world models."""

__version__ = "0.1.0"
