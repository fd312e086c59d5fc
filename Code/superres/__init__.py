"""superres: portrait super-resolution with fastai (training) and ONNX Runtime (inference).

Importing the package is cheap and torch-free: the web app and `enhance` need only ONNX Runtime,
numpy and Pillow. The code is split by job:
    superres.runtime      serving: inference, the job stores, the web app's server, `enhance` (no torch)
    superres.training     training and export (torch, fastai)
    superres.evaluation   `evaluate`: scores the exported models beside the peers
    superres.writeup      `report`: the report's figures and tables
"""
from pathlib import Path

__version__ = "0.1.0"

# The models this repo ships; `enhance`, `serve` and `evaluate` use them unless told otherwise.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
