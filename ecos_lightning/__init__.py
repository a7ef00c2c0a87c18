"""ECOS: efficient collaborative open-source sampling, trained with PyTorch Lightning."""

__version__ = "0.1.0"
