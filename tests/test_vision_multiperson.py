"""Every person: the BlazePose person detector (workers/vision/person_detector.py) on real photos and
street video.

Regions were measured by hand on a 25 px grid drawn over each image (pixels of the original image):
a detection counts for a person when its keypoint (hip centre, or shoulder centre for a person whose
hips are out of the frame) lies inside that person's region. The walkers of vtest.avi (OpenCV's
sample street video, 768x576, read from the shared media folder ``../shared/assets/video``; the tests
that need it are skipped where it is absent) were marked the same way at their hips on frames 250
and 600.
"""
import math
import os

import cv2
import numpy as np
import pytest

from workers.vision import person_detector as pdet

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
VTEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "assets",
                     "video", "vtest.avi")

# (x0, y0, x1, y1) pixels, measured by hand
MESSI_BODY = (60, 55, 465, 342)           # messi5.jpg 548x342: fingertips to the right boot, hair to the left boot
MESSI_HIPS = (215, 195, 335, 270)         # his shorts
BASKETBALL_LEFT_BODY = (30, 75, 200, 480)  # basketball1.png 640x480: left man, full body with the ball
BASKETBALL_LEFT_HIPS = (40, 235, 135, 305)
ASTRONAUT_SHOULDERS = (120, 200, 300, 330)  # astronaut.png 512x512: upper body, hips below the frame
NO_PERSON = ["images/happyfish.jpg", "images/open_palm.jpg", "images/index_up.jpg", "images/fist.jpg",
             "images/half_curl.jpg"]

# vtest.avi walkers' hips (x, y pixels), marked by hand; the couple at the top right on frame 250 walks
# side by side (two entries 22 px apart)
VTEST_HIPS = {250: [(50, 205), (210, 190), (400, 280), (562, 225), (617, 305), (645, 155), (667, 155)],
              600: [(197, 178), (582, 245), (688, 255), (472, 355), (656, 355), (305, 515)]}
MATCH_PX = 35


def rgb_of(rel):
    return np.ascontiguousarray(cv2.cvtColor(cv2.imread(os.path.join(ASSETS, rel)), cv2.COLOR_BGR2RGB))


def vtest_frames(numbers):
    """{frame number: rgb} read from vtest.avi (skips the test where the shared video is absent)."""
    if not os.path.exists(VTEST):
        pytest.skip(f"shared street video missing: {VTEST}")
    want, out = set(numbers), {}
    cap = cv2.VideoCapture(VTEST)
    i = 0
    while want - set(out):
        ok, fr = cap.read()
        assert ok, f"vtest.avi ended before frame {i}"
        if i in want:
            out[i] = np.ascontiguousarray(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    return out


def side_by_side():
    """messi5 (548x342, 69 px down) and basketball1's left man (its first 220 columns) on a 768x480 grey
    canvas: (rgb, {name: (body region, hip region)} in canvas pixels)."""
    canvas = np.full((480, 768, 3), 128, np.uint8)
    canvas[69:69 + 342, :548] = rgb_of("images/messi5.jpg")
    canvas[:, 548:] = rgb_of("images/basketball1.png")[:, :220]
    shift = lambda r, dx, dy: (r[0] + dx, r[1] + dy, r[2] + dx, r[3] + dy)  # noqa: E731
    return canvas, {"messi": (shift(MESSI_BODY, 0, 69), shift(MESSI_HIPS, 0, 69)),
                    "man": (shift(BASKETBALL_LEFT_BODY, 548, 0), shift(BASKETBALL_LEFT_HIPS, 548, 0))}


def inside(pt, region, w, h):
    x0, y0, x1, y1 = region
    return x0 <= pt[0] * w <= x1 and y0 <= pt[1] * h <= y1


@pytest.fixture(scope="module")
def det():
    d = pdet.PersonDetector(threads=1)
    yield d
    d.close()


# ------------------------------------------------------------------ decoding
def test_anchor_grid_matches_the_graph():
    a = pdet.anchors()
    assert a.shape == (2254, 2)
    # stride 8: 28x28 cells, 2 anchors each, first centre at half a cell
    assert a[0] == pytest.approx((0.5 / 28, 0.5 / 28))
    assert a[1] == pytest.approx(a[0])
    assert a[2] == pytest.approx((1.5 / 28, 0.5 / 28))
    assert a[28 * 28 * 2] == pytest.approx((0.5 / 14, 0.5 / 14))
    # the three stride-32 layers share a 7x7 grid with 6 anchors per cell
    assert a[-1] == pytest.approx((6.5 / 7, 6.5 / 7))
    assert len({tuple(x) for x in a[-6:]}) == 1


def test_weighted_nms_averages_overlaps_and_keeps_the_rest():
    r = pdet._Raw
    a = r(np.array([0.0, 0.0, 1.0, 1.0]), np.zeros((4, 2)), 0.9)
    b = r(np.array([0.1, 0.0, 1.1, 1.0]), np.ones((4, 2)), 0.6)        # IoU 0.82 with a
    c = r(np.array([5.0, 5.0, 6.0, 6.0]), np.full((4, 2), 5.0), 0.7)   # apart
    out = pdet.weighted_nms([b, c, a])
    assert [round(o.score, 2) for o in out] == [0.9, 0.7]
    assert out[0].box[0] == pytest.approx(0.1 * 0.6 / 1.5)              # score-weighted
    assert out[0].kps[0, 0] == pytest.approx(0.6 / 1.5)
    assert out[1].box == pytest.approx(c.box)


def test_tile_grid_covers_the_frame_with_overlap():
    grid = pdet.tile_grid(576, 768)
    for frac in pdet.TILE_FRACTIONS:
        side = int(576 * frac)
        level = [(x, y) for x, y, s in grid if s == side]
        assert level, side
        xs, ys = sorted({x for x, _ in level}), sorted({y for _, y in level})
        assert xs[0] == 0 and ys[0] == 0 and xs[-1] + side == 768 and ys[-1] + side == 576
        assert all(b - a <= side * (1 - pdet.TILE_OVERLAP) + 1 for a, b in zip(xs, xs[1:]))
    assert pdet.tile_grid(100, 150) == []          # tiles under MIN_TILE are not run


# ------------------------------------------------------------------ photos
def test_messi_one_full_body_person(det):
    rgb = rgb_of("images/messi5.jpg")
    h, w = rgb.shape[:2]
    people = det.detect(rgb)
    assert len(people) == 1
    p = people[0]
    assert p.score > 0.8
    assert inside(p.keypoints[0], MESSI_HIPS, w, h)
    x0, y0, x1, y1 = p.box
    # the body square holds the whole player (it is wider: a square around any rotation)
    bx0, by0, bx1, by1 = MESSI_BODY
    assert x0 * w <= bx0 + 40 and x1 * w >= bx1 - 40 and y0 * h <= by0 + 20 and y1 * h >= by1 - 10
    assert det.detect(rgb, tiles=True)[0].keypoints[0] == pytest.approx(p.keypoints[0], abs=0.02)


def test_basketball_left_man(det):
    """The left man (full body, facing the camera) is found; the right man, whose face is turned away,
    is not: the detector scores him 0.15 (it keys on the head and face)."""
    rgb = rgb_of("images/basketball1.png")
    h, w = rgb.shape[:2]
    for tiles in (False, True):
        people = det.detect(rgb, tiles=tiles)
        assert len(people) == 1
        assert inside(people[0].keypoints[0], BASKETBALL_LEFT_HIPS, w, h)
        x0, y0, x1, y1 = people[0].box
        assert x0 * w <= BASKETBALL_LEFT_BODY[0] + 20 and y0 * h <= BASKETBALL_LEFT_BODY[1] + 20
        assert y1 * h >= BASKETBALL_LEFT_BODY[3] - 60


def test_astronaut_upper_body(det):
    rgb = rgb_of("images/astronaut.png")
    h, w = rgb.shape[:2]
    people = det.detect(rgb, tiles=True)
    assert len(people) == 1
    assert inside(people[0].keypoints[2], ASTRONAUT_SHOULDERS, w, h)
    assert people[0].keypoints[0][1] > 0.85          # hips at the bottom edge or below


def test_two_people_side_by_side_need_the_windows(det):
    """The model gives the man < 0.05 next to messi on the whole frame; the frame-high windows find him."""
    rgb, regions = side_by_side()
    h, w = rgb.shape[:2]
    people = det.detect(rgb)
    assert len(people) == 2
    hips = sorted(p.keypoints[0] for p in people)
    assert inside(hips[0], regions["messi"][1], w, h) and inside(hips[1], regions["man"][1], w, h)
    alone = det.detect(rgb, windows=False)
    assert len(alone) == 1 and inside(alone[0].keypoints[0], regions["messi"][1], w, h)


def test_window_grid():
    assert pdet.window_grid(480, 768) == [(0, 0, 480), (240, 0, 480), (288, 0, 480)]
    assert pdet.window_grid(800, 400) == [(0, 0, 400), (0, 200, 400), (0, 400, 400)]
    assert pdet.window_grid(500, 520) == []


@pytest.mark.parametrize("rel", NO_PERSON)
def test_no_person_in_fish_and_hand_photos(det, rel):
    """The fish gets 0.53 and index_up 0.54 on the whole frame, but neither survives its own crop."""
    rgb = rgb_of(rel)
    assert det.detect(rgb) == []
    assert det.detect(rgb, tiles=True) == []


def test_verification_is_what_rejects_the_fish(det):
    rgb = rgb_of("images/happyfish.jpg")
    raw = det.detect(rgb, verify=False)
    assert raw, "the fish is a candidate on the whole frame"
    assert all(det.crop_score(rgb, p) < 0.5 for p in raw)


@pytest.mark.parametrize("turn", [cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180])
def test_roi_rotation_makes_the_person_upright(det, turn):
    """The ROI's rotation follows the body: on the aligned crop the detector sees an upright person."""
    rgb = np.ascontiguousarray(cv2.rotate(rgb_of("images/messi5.jpg"), turn))
    h, w = rgb.shape[:2]
    people = det.detect(rgb)
    assert len(people) == 1
    cx, cy, side, rot = people[0].roi(w, h)
    expected = {cv2.ROTATE_90_CLOCKWISE: 90, cv2.ROTATE_90_COUNTERCLOCKWISE: -90, cv2.ROTATE_180: 180}[turn]
    diff = (math.degrees(rot) - expected + 180) % 360 - 180
    assert abs(diff) < 30                            # the player leans ~12 degrees
    crop = pdet.aligned_crop(rgb, cx, cy, side, rot, 224)
    again = det.detect(crop, verify=False)
    assert again and abs(math.degrees(again[0].roi(224, 224)[3])) < 25


# ------------------------------------------------------------------ street video
@pytest.mark.parametrize("frame", sorted(VTEST_HIPS))
def test_vtest_small_walkers_with_tiles(det, frame):
    rgb = vtest_frames([frame])[frame]
    h, w = rgb.shape[:2]
    marked = VTEST_HIPS[frame]
    people = det.detect(rgb, tiles=True)
    hits = set()
    for p in people:
        x, y = p.keypoints[0][0] * w, p.keypoints[0][1] * h
        d = [math.hypot(x - mx, y - my) for mx, my in marked]
        i = int(np.argmin(d))
        assert d[i] < MATCH_PX, f"detection at ({x:.0f}, {y:.0f}) is no marked walker"
        assert i not in hits, f"walker {marked[i]} found twice"
        hits.add(i)
    assert len(hits) >= len(marked) - 1
    assert len(det.detect(rgb)) < len(hits)          # the whole frame alone misses the small ones
    # person_tiles: auto tiles this street frame (nobody half its height), off does not
    auto = pdet.detect_people(det, rgb, "auto")
    assert len(auto) == len(people)
    assert len(pdet.detect_people(det, rgb, "off")) < len(auto)


def test_person_tiles_auto_skips_close_ups(det):
    rgb = np.ascontiguousarray(cv2.resize(rgb_of("images/basketball1.png"), (960, 720)))
    calls = []
    real = det.detect
    try:
        det.detect = lambda img, **kw: calls.append(kw["tiles"]) or real(img, **kw)
        people = pdet.detect_people(det, rgb, "auto")
    finally:
        det.detect = real
    assert calls == [False] and len(people) == 1      # the man is more than half the frame high
    with pytest.raises(ValueError):
        pdet.detect_people(det, rgb, "sometimes")
