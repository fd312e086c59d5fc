"""superres: portrait super-resolution with fastai (training) and ONNX Runtime (inference).

Importing the package is cheap and torch-free: the web app and `enhance` need only ONNX Runtime,
numpy and Pillow. Training modules (`data`, `models`, `losses`, `train`, `export`) import torch/fastai.
"""
from pathlib import Path

__version__ = "0.1.0"

# The models this repo ships; `enhance`, `serve` and `evaluate` use them unless told otherwise.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
