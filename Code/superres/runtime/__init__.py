"""Serving: ONNX Runtime inference, images in and out, uploads, the job stores (in memory, Redis), the worker,
`serve` and `enhance`, and the model folder (its card and checksums).

What the Docker image runs. It imports only numpy, Pillow, ONNX Runtime, the web stack and Redis, and nothing of
superres.training, superres.evaluation or superres.writeup (import-linter contracts in pyproject.toml).
"""
