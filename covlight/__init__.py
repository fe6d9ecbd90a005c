"""covlight: annotation-efficient segmentation of COVID-19 chest CT (Lightning + Hydra)."""

__version__ = "0.1.0"
