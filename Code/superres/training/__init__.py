"""Training and export: the networks, training pairs and degradations, losses, callbacks, DDP, the four stages,
ONNX export and int8, trainable networks recovered from ONNX files, the training options, and the image metrics
(shared with evaluation).

Imports torch, fastai and kornia, and of the package only superres.runtime (the model folder, images); never
superres.evaluation or superres.writeup.
"""
