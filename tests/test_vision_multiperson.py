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


# ================================================================== poses: DetectPose / StreamPoseTracking / holistic
# (workers/vision/multipose.py, pose_landmarker.py; the handlers called as the worker calls them)
SVC = "ml.MediapipeService/"


@pytest.fixture(scope="module")
def svc():
    from workers.vision.service import VisionService
    s = VisionService({})
    yield s
    s.close()


def call(svc, method, req, frame, state=None):
    from workers.context import make_test_context
    ctx, _ = make_test_context(SVC + method, payload=req.SerializeToString(), frame=frame, stream_state=state,
                               stream="s1" if state is not None else None)
    return svc.handlers()[SVC + method](ctx)


def detect_pose(svc, rgb, **meta):
    from protos import ml_inference_pb2 as pb
    h, w = rgb.shape[:2]
    req = pb.ImageRequest(format="rgb", width=w, height=h, metadata=meta)
    return pb.PoseDetectionResponse.FromString(call(svc, "DetectPose", req, np.ascontiguousarray(rgb).tobytes()))


def frame_req(rgb, n, **meta):
    from protos import ml_inference_pb2 as pb
    h, w = rgb.shape[:2]
    return pb.VideoFrame(format="rgb", width=w, height=h, frame_number=n, timestamp_ms=100 * n, metadata=meta)


def share_inside(p, region, w, h, margin=15):
    """Share of the pose's visible landmarks (visibility >= 0.5) inside ``region`` (+ margin px)."""
    pts = [(lm.x * w, lm.y * h) for lm in p.landmarks if lm.visibility >= 0.5]
    assert len(pts) >= 10
    x0, y0, x1, y1 = region
    return sum(x0 - margin <= x <= x1 + margin and y0 - margin <= y <= y1 + margin for x, y in pts) / len(pts)


def hip_px(p, w, h):
    return ((p.landmarks[23].x + p.landmarks[24].x) / 2 * w, (p.landmarks[23].y + p.landmarks[24].y) / 2 * h)


@pytest.mark.parametrize("rel, body, hips", [("images/messi5.jpg", MESSI_BODY, MESSI_HIPS),
                                             ("images/basketball1.png", BASKETBALL_LEFT_BODY, BASKETBALL_LEFT_HIPS)])
def test_detect_pose_skeleton_inside_the_person(svc, rel, body, hips):
    rgb = rgb_of(rel)
    h, w = rgb.shape[:2]
    r = detect_pose(svc, rgb)
    assert len(r.poses) == 1
    p = r.poses[0]
    assert len(p.landmarks) == 33 and len(p.world_landmarks) == 33 and len(p.joint_angles) >= 8
    assert share_inside(p, body, w, h) >= 0.95
    x, y = hip_px(p, w, h)
    assert hips[0] <= x <= hips[2] and hips[1] <= y <= hips[3]
    assert p.track_id == 0 and p.box.width > 0 and p.box.height > 0
    assert p.box.x * w >= body[0] - 20 and (p.box.x + p.box.width) * w <= body[2] + 20


def test_detect_pose_two_people_left_to_right(svc):
    rgb, regions = side_by_side()
    h, w = rgb.shape[:2]
    r = detect_pose(svc, rgb)
    assert len(r.poses) == 2
    left, right = r.poses
    assert share_inside(left, regions["messi"][0], w, h) >= 0.95
    assert share_inside(right, regions["man"][0], w, h) >= 0.95
    assert hip_px(left, w, h)[0] < hip_px(right, w, h)[0]
    for p in r.poses:
        assert len(p.joint_angles) >= 8


def test_max_poses_caps_and_is_checked(svc):
    from workers.context import WorkerError
    rgb, regions = side_by_side()
    h, w = rgb.shape[:2]
    r = detect_pose(svc, rgb, max_poses="1")
    assert len(r.poses) == 1
    assert share_inside(r.poses[0], regions["messi"][0], w, h) >= 0.95      # the detector's best (0.98 vs 0.91)
    for bad in ("0", "17", "two"):
        with pytest.raises(WorkerError) as e:
            detect_pose(svc, rgb, max_poses=bad)
        assert e.value.code == "INVALID_ARGUMENT" and "max_poses" in str(e.value)
    with pytest.raises(WorkerError) as e:
        detect_pose(svc, rgb, person_tiles="always")
    assert e.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("rel", NO_PERSON)
def test_detect_pose_none_without_a_person(svc, rel):
    assert len(detect_pose(svc, rgb_of(rel)).poses) == 0


def test_pose_landmarks_follow_a_rotated_person(svc):
    """The ROI's rotation and its inverse: the skeleton of messi turned 90 degrees is his skeleton turned."""
    rgb = rgb_of("images/messi5.jpg")
    h, w = rgb.shape[:2]
    upright = detect_pose(svc, rgb).poses[0]
    turned = detect_pose(svc, cv2.rotate(rgb, cv2.ROTATE_90_CLOCKWISE)).poses[0]
    # clockwise: (x, y) -> (h - 1 - y, x) in pixels; the turned frame is h wide and w high
    err = [math.hypot(t.x * h - (h - 1 - u.y * h), t.y * w - u.x * w)
           for u, t in zip(upright.landmarks, turned.landmarks) if u.visibility >= 0.5]
    assert len(err) >= 20 and float(np.median(err)) < 8.0
    assert {a.name: round(a.degrees) for a in upright.joint_angles}.keys() == {a.name for a in turned.joint_angles}


def test_heatmap_refinement_moves_to_the_peak():
    from workers.vision.pose_landmarker import refine_with_heatmap
    heat = np.full((64, 64, 2), -10.0, np.float32)
    heat[20, 30, 0] = 10.0                   # landmark 0: one confident cell near its estimate
    heat[40, 10, 1] = -1.0                   # landmark 1: nothing confident (peak 0.27 < 0.5): unchanged
    xy = np.array([[31.5 / 64, 22.0 / 64], [10.2 / 64, 40.3 / 64]])
    out = refine_with_heatmap(xy, heat)
    assert out[0] == pytest.approx((30 / 64, 20 / 64), abs=1e-3)
    assert out[1] == pytest.approx(xy[1])


def test_stream_pose_ids_stable_over_street_video(svc):
    """40 frames of vtest.avi (4 s): measured 6 tracks, 5 of them all 40 frames, one born on frame 250
    (the detector's periodic run) and kept to the end; the detector ran on 4 frames."""
    from protos import ml_inference_pb2 as pb
    numbers = list(range(230, 270))
    frames = vtest_frames(numbers)
    st, tracks = {}, {}
    for i, n in enumerate(numbers):
        rgb = frames[n]
        meta = {"max_poses": "8"} if i == 0 else {}
        r = pb.PoseDetectionResponse.FromString(call(svc, "StreamPoseTracking", frame_req(rgb, n, **meta),
                                                     rgb.tobytes(), st))
        assert r.frame_number == n
        ids = [p.track_id for p in r.poses]
        assert ids == sorted(set(ids)) and all(i >= 1 for i in ids) and len(ids) <= 8
        for p in r.poses:
            tracks.setdefault(p.track_id, {})[n] = hip_px(p, 768, 576)
    # an id never jumps to another person: its hips move at most 30 px from one frame to the next it is in
    for tid, seen in tracks.items():
        ns = sorted(seen)
        for a, b in zip(ns, ns[1:]):
            assert math.dist(seen[a], seen[b]) < 30 * (b - a), (tid, a, b)
    # the walkers marked on frame 250: each one found there keeps one id from when it was first seen
    found = 0
    for mx, my in VTEST_HIPS[250]:
        near = [tid for tid, seen in tracks.items() if 250 in seen and math.dist(seen[250], (mx, my)) < MATCH_PX]
        if near:
            found += 1
            seen = sorted(tracks[near[0]])
            assert len(seen) >= 0.9 * (numbers[-1] - seen[0] + 1), (near[0], seen)
    assert found >= len(VTEST_HIPS[250]) - 1
    assert len(tracks) <= 8
    assert st["pose_tracker"].detector_runs < len(numbers) / 2     # followed from the landmarks, not re-detected


def test_stream_pose_max_poses_from_the_first_frame(svc):
    from protos import ml_inference_pb2 as pb
    numbers = list(range(245, 255))
    frames = vtest_frames(numbers)
    st, counts = {}, []
    for i, n in enumerate(numbers):
        meta = {"max_poses": "7", "person_tiles": "on"} if i == 0 else {"max_poses": "1"}   # read on the first frame
        r = pb.PoseDetectionResponse.FromString(call(svc, "StreamPoseTracking", frame_req(frames[n], n, **meta),
                                                     frames[n].tobytes(), st))
        counts.append(len(r.poses))
    assert max(counts) <= 7 and min(counts) >= 5


def test_stream_holistic_per_person(svc):
    from protos import ml_inference_pb2 as pb
    rgb, regions = side_by_side()
    h, w = rgb.shape[:2]
    st = {}
    for n in range(3):
        r = pb.HolisticTrackingResponse.FromString(call(svc, "StreamHolisticTracking", frame_req(rgb, n), rgb.tobytes(), st))
        assert r.frame_number == n and len(r.people) == 2
        assert [p.track_id for p in r.people] == [1, 2]          # ids stable over the frames
        by_region = {}
        for person in r.people:
            assert person.pose.track_id == person.track_id and len(person.pose.landmarks) == 33
            name = "messi" if share_inside(person.pose, regions["messi"][0], w, h) >= 0.95 else "man"
            assert share_inside(person.pose, regions[name][0], w, h) >= 0.95
            by_region[name] = person
            # each face mesh lies on its own person's head, scored by the face detector on its crop
            assert len(person.face.landmarks) == 478 and person.face.confidence > 0.5
            nose = person.face.landmarks[1]
            assert regions[name][0][0] <= nose.x * w <= regions[name][0][2]
        assert set(by_region) == {"messi", "man"}
        # fields 1-3 are the first person's
        assert r.pose == r.people[0].pose and r.face == r.people[0].face and list(r.hands) == list(r.people[0].hands)
    assert sum(len(p.hands) for p in r.people) >= 2
