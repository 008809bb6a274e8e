"""Real inputs for the LiteRT tests and benchmark (numpy / OpenCV only: no proto imports, so this is
safe next to tritonclient, whose `inference.*` protos clash with ours in one process)."""
from __future__ import annotations

import os
import wave

import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
SHARED_AUDIO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "audio",
                            "sense_and_sensibility_01_austen_64kb-0870.wav")
FACE_MODEL = "face_detection_short_range"
WAKEWORD_MODEL = "okay_nabu"


def face_input(image: str) -> np.ndarray:
    """[1,128,128,3] float32 in [-1, 1], RGB, as face_detection_short_range expects."""
    import cv2
    bgr = cv2.imread(os.path.join(ASSETS, image), cv2.IMREAD_COLOR)
    assert bgr is not None, image
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    small = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (small / 127.5 - 1.0)[None]


def best_face_score(classificators: np.ndarray) -> float:
    """Best anchor score: sigmoid of the largest raw classificator logit (clipped like MediaPipe)."""
    logit = float(np.clip(classificators.astype(np.float64), -100, 100).max())
    return 1.0 / (1.0 + np.exp(-logit))


def wakeword_windows(scale: float, zero_point: int, limit: int = 60) -> list:
    """Quantised [1,3,40] int8 feature windows of real read speech (pymicro-wakeword's front end)."""
    from pymicro_wakeword.microwakeword import MicroWakeWordFeatures
    if not os.path.exists(SHARED_AUDIO):
        import pytest
        pytest.skip(f"speech sample missing: {SHARED_AUDIO}")
    with wave.open(SHARED_AUDIO) as w:
        assert w.getframerate() == 16000 and w.getsampwidth() == 2 and w.getnchannels() == 1
        audio = w.readframes(w.getnframes())
    feats = list(MicroWakeWordFeatures().process_streaming(audio))
    out = []
    for i in range(0, len(feats) - 2, 3):
        x = np.concatenate(feats[i:i + 3], axis=1) / scale + zero_point
        out.append(np.clip(np.round(x), -128, 127).astype(np.int8))
        if len(out) >= limit:
            break
    return out
