"""Gesture geometry: the same gesture at any rotation and scale; up/down gestures follow the image's vertical.

Synthetic hands cover every gesture (ILoveYou and Thumb_Down have no photo); real landmark sets from
the hand photos are rotated in 3-D and scaled to show the classification does not move.
"""
import math
import os

import numpy as np
import pytest

from workers.vision import gestures as G

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
RNG = np.random.default_rng(7)


def rot_x(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_z(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def random_rotation():
    q = RNG.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a*a+b*b-c*c-d*d, 2*(b*c-a*d), 2*(b*d+a*c)],
                     [2*(b*c+a*d), a*a-b*b+c*c-d*d, 2*(c*d-a*b)],
                     [2*(b*d-a*c), 2*(c*d+a*b), a*a-b*b-c*c+d*d]])


def synthetic_hand(fingers: str, thumb_extended: bool) -> np.ndarray:
    """21 hand landmarks (x right, y down, z away from the camera), palm to the camera, fingers up.
    fingers: index/middle/ring/pinky as '1' extended or '0' folded."""
    p = np.zeros((21, 3))
    mcps = {5: (0.30, -1.00), 9: (0.08, -1.05), 13: (-0.13, -1.00), 17: (-0.32, -0.90)}
    for k, bit in zip((5, 9, 13, 17), fingers):
        base = np.array([*mcps[k], 0.0])
        p[k] = base
        d = base / np.linalg.norm(base)
        bends = (5, 5, 5) if bit == "1" else (75, 100, 65)
        pos = base
        for j, (length, b) in enumerate(zip((0.45, 0.30, 0.25), bends)):
            d = rot_x(math.radians(b)) @ d
            pos = pos + length * d
            p[k + 1 + j] = pos
    p[1] = (0.30, -0.30, 0.0)
    if thumb_extended:
        d = np.array([0.8, -0.6, 0.0]) / 1.0
        for j, length in enumerate((0.35, 0.30, 0.25)):
            p[2 + j] = p[1 + j] + length * d
    else:  # folded across the curled fingers
        p[2], p[3], p[4] = (0.50, -0.55, -0.10), (0.35, -0.80, -0.30), (0.10, -0.85, -0.35)
    return p


SHAPES = {
    "Closed_Fist": ("0000", False),
    "Open_Palm": ("1111", True),
    "Victory": ("1100", False),
    "ILoveYou": ("1001", True),
}


def image_of(world: np.ndarray, angle_deg: float, scale: float) -> np.ndarray:
    """The hand as seen in the image: rotated in the image plane, scaled, shifted (pixels)."""
    return (rot_z(math.radians(angle_deg)) @ world.T).T[:, :2] * scale + np.array([300.0, 200.0])


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_gestures_any_rotation_and_scale(name):
    fingers, thumb = SHAPES[name]
    base = synthetic_hand(fingers, thumb)
    for _ in range(40):
        R = random_rotation()
        scale = float(10 ** RNG.uniform(-2, 2))
        world = (R @ base.T).T * scale
        img = image_of(base, RNG.uniform(0, 360), float(10 ** RNG.uniform(0, 3)))
        got = G.classify(world, img)
        assert got is not None and got[0] == name, (name, got)
        assert 0.5 <= got[1] <= 1.0


def _thumb_angle(p):
    v = p[4, :2] - p[2, :2]
    return math.degrees(math.atan2(v[0], -v[1]))   # angle from the image's up, clockwise


@pytest.mark.parametrize("tilt", [-25, -10, 0, 10, 25])
@pytest.mark.parametrize("scale", [0.05, 1.0, 30.0])
def test_thumb_up_down_follow_the_image_vertical(tilt, scale):
    base = synthetic_hand("0000", True)
    up = -_thumb_angle(base) + tilt        # in-plane rotation that makes the thumb point (nearly) up
    for angle, expected in ((up, "Thumb_Up"), (up + 180, "Thumb_Down")):
        world = (rot_z(math.radians(angle)) @ base.T).T * scale
        got = G.classify(world, world[:, :2])
        assert got is not None and got[0] == expected, (angle, got)
    # thumb sideways: neither up nor down, and not a fist either (the thumb is out)
    world = (rot_z(math.radians(up + 90)) @ base.T).T * scale
    got = G.classify(world, world[:, :2])
    assert got is None or got[0] not in ("Thumb_Up", "Thumb_Down", "Closed_Fist")


def test_pointing_up_needs_the_finger_up():
    base = synthetic_hand("1000", False)
    for tilt in (-20, 0, 20):
        world = (rot_z(math.radians(tilt)) @ base.T).T
        got = G.classify(world * 3.0, world[:, :2] * 50)
        assert got is not None and got[0] == "Pointing_Up"
    world = (rot_z(math.radians(180)) @ base.T).T
    got = G.classify(world, world[:, :2])
    assert got is None or got[0] != "Pointing_Up"


def test_confidence_comes_from_geometry():
    """A finger half-way between folded and extended lowers the confidence, it is not a constant."""
    crisp = G.classify(synthetic_hand("1100", False), synthetic_hand("1100", False)[:, :2])
    p = synthetic_hand("1100", False)
    # half-open the ring finger
    base, d = p[13], p[13] / np.linalg.norm(p[13])
    pos = base
    for j, (length, b) in enumerate(zip((0.45, 0.30, 0.25), (30, 40, 30))):
        d = rot_x(math.radians(b)) @ d
        pos = pos + length * d
        p[14 + j] = pos
    soft = G.scores(G.shape(p, p[:, :2]))["Victory"]
    assert crisp[0] == "Victory" and soft < crisp[1]


def test_at_most_one_gesture_and_none_for_ambiguous():
    # all fingers half-bent: no gesture reaches the threshold
    p = synthetic_hand("1111", False)
    for k in (5, 9, 13, 17):
        base, d = p[k], p[k] / np.linalg.norm(p[k])
        pos = base
        for j, (length, b) in enumerate(zip((0.45, 0.30, 0.25), (35, 45, 30))):
            d = rot_x(math.radians(b)) @ d
            pos = pos + length * d
            p[k + 1 + j] = pos
    assert G.classify(p, p[:, :2]) is None


@pytest.fixture(scope="module")
def real_hands():
    """World + image landmarks of the hand photos, from MediaPipe Hands (static mode)."""
    import cv2
    from mediapipe.python.solutions import hands as mph
    from workers.vision import landmarks
    out = {}
    with mph.Hands(static_image_mode=True, max_num_hands=1) as h:
        for name, fname in (("Open_Palm", "images/open_palm.jpg"), ("Closed_Fist", "images/fist.jpg"),
                            ("Pointing_Up", "images/index_up.jpg"), ("Victory", "video/gestures_part1/frame_05.png"),
                            ("Thumb_Up", "video/gestures_part1/frame_17.png")):
            rgb = cv2.cvtColor(cv2.imread(os.path.join(ASSETS, fname)), cv2.COLOR_BGR2RGB)
            res = h.process(rgb)
            assert res.multi_hand_world_landmarks, fname
            img = landmarks.to_pixels(landmarks.to_array(res.multi_hand_landmarks[0]), rgb.shape[1], rgb.shape[0])
            out[name] = (landmarks.to_array(res.multi_hand_world_landmarks[0]), img[:, :2])
    return out


def test_real_landmarks_rotated_and_scaled(real_hands):
    for name, (world, img) in real_hands.items():
        ref = G.classify(world, img)
        assert ref is not None and ref[0] == name, (name, ref)
        for _ in range(25):
            R = random_rotation()
            s = float(10 ** RNG.uniform(-2, 2))
            # the hand's shape turned any way in 3-D and scaled; its image direction kept
            got = G.classify((R @ world.T).T * s, img * s)
            assert got is not None and got[0] == name, (name, got)
            assert abs(got[1] - ref[1]) < 1e-6


def test_real_landmarks_in_plane_rotation(real_hands):
    for name in ("Open_Palm", "Closed_Fist", "Victory"):
        world, img = real_hands[name]
        for angle in (45, 90, 135, 180, 270):
            R = rot_z(math.radians(angle))
            img_r = (R[:2, :2] @ (img - img.mean(0)).T).T * 0.5
            got = G.classify((R @ world.T).T, img_r)
            assert got is not None and got[0] == name, (name, angle, got)
    world, img = real_hands["Thumb_Up"]
    R = rot_z(math.radians(180))
    got = G.classify((R @ world.T).T, (R[:2, :2] @ img.T).T)
    assert got is not None and got[0] == "Thumb_Down"
