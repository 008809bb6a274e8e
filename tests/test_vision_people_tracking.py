"""People and face tracking: the tracker on synthetic trajectories, then StreamObjectTracking on real video.

Synthetic (workers/vision/sort_tracker.py): the Hungarian assignment against brute force; boxes moving
at constant velocity with noise keep one id each through crossings, occlusions and missed detections;
a one-frame spurious box never gets an id; low-score boxes keep a track alive but start none; a box of
another size or (with features) another appearance does not take over a track; a track
deleted after `max_age` frames comes back with a new id (ids are never reused); a person seen every
other frame gets an id with `tentative_misses`.

Real media, through the handler in-process: the first 200 frames of vtest.avi (street video, small
walkers) against walkers marked by hand (tests/assets/video/vtest_walkers.csv): most of them keep one id
for 50+ frames, every box on a marked frame holds a marked person, every person box holds foreground
against the video's median background (no box on empty ground), no per-frame jump beyond walking speed,
the empty square alone gives no track; a frame-high window takes no group of walkers for one large
person; the gesture frames give one face id and one person id; the `track` metadata.
"""
import itertools
import math
import os

import cv2
import numpy as np
import pytest

from protos import ml_inference_pb2 as pb
from workers.context import WorkerError, make_test_context
from workers.vision import sort_tracker as st
from workers.vision.service import VisionService

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "tests", "assets")
SVC = "ml.MediapipeService/"


# ------------------------------------------------------------------ assignment
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 6), (6, 4), (5, 5), (2, 7)])
def test_hungarian_matches_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        c = rng.random(shape)
        n, m = shape
        if n <= m:
            best = min(sum(c[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        else:
            best = min(sum(c[p[j], j] for j in range(m)) for p in itertools.permutations(range(n), m))
        pairs = st.hungarian(c)
        assert len(pairs) == min(n, m)
        assert len({r for r, _ in pairs}) == len(pairs) == len({k for _, k in pairs})
        assert sum(c[r, k] for r, k in pairs) == pytest.approx(best)


def test_assign_never_returns_a_forbidden_pair_and_maximises_allowed_ones():
    cost = np.array([[0.1, 0.2], [0.3, 0.9]])
    allowed = np.array([[True, True], [True, False]])
    # the cheapest pair (0,0) would leave row 1 with only a forbidden column: (0,1)+(1,0) is taken
    pairs, rows, cols = st.assign(cost, allowed)
    assert sorted(pairs) == [(0, 1), (1, 0)] and rows == [] and cols == []
    pairs, rows, cols = st.assign(cost, np.zeros_like(allowed))
    assert pairs == [] and rows == [0, 1] and cols == [0, 1]


def test_iou_matrix():
    m = st.iou_matrix([(0, 0, 10, 10), (100, 100, 5, 5)], [(5, 0, 10, 10), (0, 0, 10, 10)])
    assert m[0, 0] == pytest.approx(50 / 150) and m[0, 1] == pytest.approx(1.0)
    assert m[1, 0] == 0 and m[1, 1] == 0


def test_kalman_filter_learns_the_velocity():
    kf = st.KalmanBoxFilter()
    mean, cov = kf.initiate(st.to_xyah((0, 0, 30, 90)))
    for k in range(1, 15):
        mean, cov = kf.predict(mean, cov)
        mean, cov = kf.update(mean, cov, st.to_xyah((6 * k, -2 * k, 30, 90)))
    assert mean[4] == pytest.approx(6, abs=0.3) and mean[5] == pytest.approx(-2, abs=0.3)
    pred, _ = kf.predict(mean, cov)
    assert st.to_xywh(pred)[:2] == pytest.approx((6 * 15, -2 * 15), abs=1.0)


# ------------------------------------------------------------------ synthetic scenes
class Walker:
    """A 30x90 px box moving at constant velocity."""

    def __init__(self, x, y, vx, vy, w=30, h=90):
        self.x, self.y, self.vx, self.vy, self.w, self.h = x, y, vx, vy, w, h

    def box(self, n, rng=None, noise=0.0):
        e = rng.normal(0, noise, 4) if rng is not None and noise else np.zeros(4)
        return (self.x + self.vx * n + e[0], self.y + self.vy * n + e[1], self.w + e[2], self.h + e[3])


def run_scene(tracker, walkers, frames, drop=lambda n, i: False, extra=lambda n: [], noise=2.0, seed=0,
              score=0.9):
    """Feed the walkers' boxes (minus the dropped ones, plus extra (box, score)) for `frames` frames.

    Returns, per frame, {track id: (walker index, box)} of the reported tracks; the index is -1 for a
    box on no walker, -2 for a box on two overlapping walkers."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(frames):
        dets = [(w.box(n, rng, noise), score, i) for i, w in enumerate(walkers) if not drop(n, i)]
        dets += [(b, s, -1) for b, s in extra(n)]
        order = rng.permutation(len(dets))            # detectors give no order
        dets = [dets[k] for k in order]
        tracks = tracker.update([d[0] for d in dets], [d[1] for d in dets])
        frame = {}
        for t in tracks:
            # the walker whose true box this track's box overlaps (-2: two walkers overlap it, ambiguous)
            ious = st.iou_matrix([t.box], [w.box(n) for w in walkers])[0] if walkers else np.zeros(0)
            k = int(np.argmax(ious)) if len(ious) and ious.max() > 0.3 else -1
            if k >= 0 and np.sort(ious)[-2:][0] > 0.2 if len(ious) > 1 else False:
                k = -2
            frame[t.track_id] = (k, t.box)
        out.append(frame)
    return out


def ids_of(out, walker):
    return {tid for fr in out for tid, (k, _) in fr.items() if k == walker}


def test_constant_velocity_walkers_with_noise_keep_one_id_each():
    walkers = [Walker(0, 100, 5, 0), Walker(600, 300, -4, 1), Walker(650, 0, 0, 3), Walker(50, 400, 3, -2)]
    out = run_scene(st.ByteTracker("person"), walkers, 100)
    for i in range(len(walkers)):
        assert len(ids_of(out, i)) == 1, i
        assert sum(1 for fr in out if any(k == i for k, _ in fr.values())) == 100
    assert all(k >= 0 for fr in out for k, _ in fr.values())
    assert sorted({tid for fr in out for tid in fr}) == [1, 2, 3, 4]


def test_crossing_walkers_keep_their_ids():
    # two walkers on the same line, head-on; around the crossing only the one in front is detected
    a, b = Walker(0, 200, 6, 0), Walker(600, 205, -6, 0)
    drop = lambda n, i: i == 1 and 47 <= n <= 53   # noqa: E731  (b hidden behind a while they overlap)
    out = run_scene(st.ByteTracker("person"), [a, b], 100, drop=drop)
    ida, idb = ids_of(out, 0), ids_of(out, 1)
    assert len(ida) == 1 and len(idb) == 1 and ida != idb
    assert ida <= set(out[99]) and idb <= set(out[99])


def test_crossing_at_an_angle_with_both_detected():
    a, b = Walker(0, 0, 5, 4), Walker(500, 0, -5, 4)
    out = run_scene(st.ByteTracker("person"), [a, b], 100, noise=3.0, seed=3)
    assert len(ids_of(out, 0)) == 1 and len(ids_of(out, 1)) == 1 and ids_of(out, 0) != ids_of(out, 1)


def test_occlusion_of_ten_frames_keeps_the_id():
    w = Walker(0, 100, 7, 0)
    out = run_scene(st.ByteTracker("person", max_age=30), [w], 80, drop=lambda n, i: 30 <= n < 40)
    assert len(ids_of(out, 0)) == 1
    assert [bool(fr) for fr in out[28:42]] == [True, True] + [False] * 10 + [True, True]
    # the filter's box on its first frame back is where the walker is (predicted through the gap)
    (k, box), = out[40].values()
    assert k == 0 and abs(box[0] - w.box(40)[0]) < 10


def test_random_missed_detections_keep_one_id():
    rng = np.random.default_rng(7)
    missing = rng.random((120, 3)) < 0.25
    walkers = [Walker(0, 50, 4, 1), Walker(700, 250, -5, 0), Walker(200, 500, 2, -3)]
    out = run_scene(st.ByteTracker("person"), walkers, 120, drop=lambda n, i: n > 0 and missing[n, i])
    for i in range(3):
        assert len(ids_of(out, i)) == 1


def test_spurious_one_frame_box_gets_no_id():
    walkers = [Walker(0, 100, 5, 0)]
    extra = lambda n: [((400, 300, 40, 100), 0.95)] if n in (20, 50) else []   # noqa: E731
    out = run_scene(st.ByteTracker("person"), walkers, 80, extra=extra)
    assert {tid for fr in out for tid in fr} == {1}
    assert all(k == 0 for fr in out for k, _ in fr.values())


def test_new_object_needs_min_hits_and_ids_are_not_consumed_by_spurious_boxes():
    tr = st.ByteTracker("person", min_hits=3)
    walkers = [Walker(0, 100, 5, 0), Walker(300, 400, 0, -2)]
    late = lambda n, i: i == 1 and n < 10                          # noqa: E731
    extra = lambda n: [((600, 50, 30, 80), 0.9)] if n == 5 else []  # noqa: E731
    out = run_scene(tr, walkers, 30, drop=late, extra=extra)
    assert not any(k == 1 for fr in out[:12] for k, _ in fr.values())      # seen at 10, 11: tentative
    assert any(k == 1 for k, _ in out[12].values())                        # third hit: confirmed
    assert ids_of(out, 1) == {2}                                           # the spurious box took no id


def test_low_score_boxes_keep_a_track_but_start_none():
    w = Walker(0, 100, 5, 0)
    rng = np.random.default_rng(1)
    tr = st.ByteTracker("person", high=0.5, low=0.1)
    seen = []
    for n in range(60):
        s = 0.9 if n < 20 else 0.3            # partly occluded from frame 20: low scores
        boxes, scores = [w.box(n, rng, 1.0)], [s]
        if n >= 20:                            # and a low-score box elsewhere, every frame
            boxes.append((500, 400, 30, 90))
            scores.append(0.3)
        seen.append([t.track_id for t in tr.update(boxes, scores)])
    assert seen[19] == [1] and all(s == [1] for s in seen[20:])


def test_a_box_of_another_size_does_not_take_over_a_track():
    # a walker lost for a few frames; a box twice its height where it was (a mis-scaled detection around
    # it) overlaps its predicted box (IoU 0.25) but is not it: the track stays lost, the box starts its own
    w = Walker(100, 100, 0, 0)
    tr = st.ByteTracker("person", min_hits=3)
    for n in range(10):
        tr.update([w.box(n)], [0.9])
    for n in range(3):
        tr.update([], [])
    big = (85, 55, 60, 180)
    assert st.iou_matrix([big], [w.box(0)])[0, 0] > 0.2
    assert tr.update([big], [0.9]) == []
    assert [t.track_id for t in tr.update([w.box(0)], [0.9])] == [1]


def test_appearance_gate_keeps_a_track_from_another_objects_box():
    # with appearance features, a box where the lost track is predicted but looking different is refused
    red, blue = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    for gate, expect in ((0.5, []), (1.0, [1])):
        tr = st.ByteTracker("person", max_appearance=gate)
        for n in range(5):
            tr.update([(100 + 5 * n, 100, 30, 90)], [0.9], [red])
        tr.update([], [], [])
        got = tr.update([(130, 100, 30, 90)], [0.9], [blue])
        assert [t.track_id for t in got] == expect
    assert st.appearance_distance(red, red) == pytest.approx(0) and st.appearance_distance(red, blue) == pytest.approx(1)


def test_ids_are_never_reused_after_max_age():
    w = Walker(0, 100, 3, 0)
    out = run_scene(st.ByteTracker("person", max_age=5), [w], 60, drop=lambda n, i: 20 <= n < 30)
    assert set(out[19]) == {1} and set(out[59]) == {2}
    assert ids_of(out, 0) == {1, 2}


def test_tentative_misses_let_a_flickering_walker_get_an_id():
    # detected every other frame: ByteTrack's rule (3 matches in a row) never confirms him; with up to 2
    # missed frames between matches he gets an id on his third detection
    w = Walker(0, 100, 5, 0)
    seen = {}
    for misses in (0, 2):
        tr = st.ByteTracker("person", min_hits=3, tentative_misses=misses)
        tr.update([], [])                                    # not the stream's first frame
        seen[misses] = [n for n in range(1, 20) if tr.update([w.box(n)] if n % 2 else [], [0.9] if n % 2 else [])]
    assert seen[0] == [] and seen[2] == [5, 7, 9, 11, 13, 15, 17, 19]


def test_shared_id_counter_and_trajectory_length():
    ids = itertools.count(1)
    faces, people = st.ByteTracker("face", ids=ids, trajectory_len=5), st.ByteTracker("person", ids=ids)
    a = faces.update([(10, 10, 20, 20)], [0.9])
    b = people.update([(100, 10, 40, 120)], [0.9])
    assert [t.track_id for t in a] == [1] and [t.track_id for t in b] == [2]
    for n in range(1, 9):
        a = faces.update([(10 + n, 10, 20, 20)], [0.9])
    assert len(a[0].trajectory) == 5 and a[0].trajectory[-1] == a[0].box


# ------------------------------------------------------------------ StreamObjectTracking on real media
# vtest.avi: OpenCV's sample street video (768x576, 10 fps, 795 frames), people ~90 px tall walking across a
# square, a group standing and talking by the lamp post, a cloth and a tripod on the grass. Read from the
# shared media folder; the tests that need it are skipped where it is absent.
VTEST = os.path.join(ROOT, "..", "shared", "assets", "video", "vtest.avi")
needs_vtest = pytest.mark.skipif(not os.path.exists(VTEST), reason="needs ../shared/assets/video/vtest.avi")
VTEST_FRAMES = 200
FG_DIFF = 40            # grey levels: a pixel this far from the background model is foreground


@pytest.fixture(scope="module")
def svc():
    s = VisionService({"max_frame_bytes": 32 * 2**20})
    yield s
    s.close()


def track_frame(svc, rgb, state, n=0, **meta):
    h, w = rgb.shape[:2]
    req = pb.VideoFrame(format="rgb", width=w, height=h, frame_number=n, timestamp_ms=100 * n, metadata=meta)
    ctx, _ = make_test_context(SVC + "StreamObjectTracking", payload=req.SerializeToString(), frame=rgb.tobytes(),
                               stream_state=state, stream="s1")
    r = pb.ObjectTrackingResponse.FromString(svc.handlers()[SVC + "StreamObjectTracking"](ctx))
    assert r.frame_number == n
    return r


def background_model(path, step=8):
    """Per-pixel median of every `step`-th frame of the whole video: the empty square (people pass)."""
    cap = cv2.VideoCapture(path)
    frames, n = [], 0
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        if n % step == 0:
            frames.append(fr)
        n += 1
    cap.release()
    return np.median(np.stack(frames), axis=0).astype(np.uint8)


def foreground_mask(bgr, background):
    fg = (np.abs(bgr.astype(np.int16) - background.astype(np.int16)).max(axis=2) > FG_DIFF).astype(np.uint8)
    return cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


@pytest.fixture(scope="module")
def vtest_tracks(svc):
    """The first VTEST_FRAMES frames through the handler, default metadata. Returns (person tracks
    {id: [(frame, cx, cy, w, h, foreground share of the box)]}, face ids, background model)."""
    if not os.path.exists(VTEST):
        pytest.skip("needs ../shared/assets/video/vtest.avi")
    bg = background_model(VTEST)
    cap = cv2.VideoCapture(VTEST)
    state, people, face_ids = {}, {}, set()
    for n in range(VTEST_FRAMES):
        ok, bgr = cap.read()
        assert ok
        h, w = bgr.shape[:2]
        r = track_frame(svc, np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), state, n)
        fg = foreground_mask(bgr, bg)
        for o in r.objects:
            if o.label == "face":
                face_ids.add(o.track_id)
                continue
            assert o.label == "person"
            x0, y0 = int(o.bbox.x * w), int(o.bbox.y * h)
            x1, y1 = int((o.bbox.x + o.bbox.width) * w), int((o.bbox.y + o.bbox.height) * h)
            share = float(fg[y0:y1, x0:x1].mean()) if x1 > x0 and y1 > y0 else 0.0
            people.setdefault(o.track_id, []).append((n, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, share))
    cap.release()
    for st_ in state.values():
        if hasattr(st_, "close"):
            st_.close()
    return people, face_ids, bg


# The walkers, marked by hand on 17 frames (every 12-13) of the 200: tests/assets/video/vtest_walkers.csv, one
# row per visible person: frame, walker letter, torso centre in pixels (tests/assets/ATTRIBUTION.md tells who
# is who). 10 people; 9 of them are marked over 50 frames or more (the couple D and E side by side, C hidden
# behind the lamp post's sign for 100 frames, T 25-40 px tall on the far path among them).
WALKERS = os.path.join(ASSETS, "video", "vtest_walkers.csv")
KEEP_FRAMES = 50


def marked_walkers(path=WALKERS):
    """{frame: {walker: (x, y)}} of the hand-marked table."""
    out = {}
    with open(path) as f:
        next(f)
        for line in f:
            frame, walker, x, y = line.strip().split(",")
            out.setdefault(int(frame), {})[walker] = (float(x), float(y))
    return out


def boxes_on_walkers(boxes, marks):
    """{track id: walker, or None}: the frame's boxes [(id, x0, y0, x1, y1)] matched one to one to the marked
    walkers whose point lies in the box, least total distance to the box centres (Hungarian, as CLEAR-MOT
    matches hypotheses to objects: where three people meet, each box goes to its own person)."""
    names = sorted(marks)
    cost = np.array([[math.hypot(marks[k][0] - (b[1] + b[3]) / 2, marks[k][1] - (b[2] + b[4]) / 2) for k in names]
                     for b in boxes]).reshape(len(boxes), len(names))
    inside = np.array([[b[1] <= marks[k][0] <= b[3] and b[2] <= marks[k][1] <= b[4] for k in names]
                       for b in boxes], dtype=bool).reshape(cost.shape)
    pairs, _, _ = st.assign(cost, inside)
    out = {b[0]: None for b in boxes}
    out.update({boxes[i][0]: names[j] for i, j in pairs})
    return out


def ids_kept(boxes_by_frame, marks, min_span=KEEP_FRAMES):
    """{walker: (track id, frames)} for each walker marked over at least `min_span` frames: the longest run
    of one id on him, from the first to the last marked frame where it is on him (`boxes_on_walkers`),
    counted inclusive. A marked frame where the id is not answered, or where its box holds the walker but
    went to someone nearer its centre (people overlapping), neither extends nor ends the run; one where
    its box is away from the walker ends it. boxes_by_frame: {frame: [(id, x0, y0, x1, y1)]}."""
    frames = sorted(marks)
    on = {f: boxes_on_walkers(boxes_by_frame.get(f, []), marks[f]) for f in frames}
    box = {(f, b[0]): b for f in frames for b in boxes_by_frame.get(f, [])}
    out = {}
    for walker in sorted({k for m in marks.values() for k in m}):
        mine = [f for f in frames if walker in marks[f]]
        if mine[-1] - mine[0] + 1 < min_span:
            continue
        best = (0, 0)
        for tid in {t for f in mine for t, k in on[f].items() if k == walker}:
            start = None
            for f in mine:
                if on[f].get(tid) == walker:
                    start = f if start is None else start
                    best = max(best, (f - start + 1, tid))
                elif (f, tid) in box:
                    _, x0, y0, x1, y1 = box[f, tid]
                    x, y = marks[f][walker]
                    if not (x0 <= x <= x1 and y0 <= y <= y1):
                        start = None
        out[walker] = (best[1], best[0])
    return out


def test_ids_kept_counts_a_run_until_the_id_is_on_someone_else():
    marks = {0: {"a": (10, 10), "b": (50, 10)}, 30: {"a": (20, 10), "b": (60, 10)}, 60: {"a": (30, 10), "b": (70, 10)},
             90: {"a": (40, 10), "b": (80, 10)}}
    box = lambda tid, x: (tid, x - 5, 0, x + 5, 20)          # noqa: E731
    frames = {0: [box(1, 10), box(2, 50)], 30: [box(2, 60)],           # a unseen at 30: the run goes on
              60: [box(1, 30), box(2, 70)], 90: [box(2, 40), box(3, 80)]}   # id 2 passed to a at 90
    assert ids_kept(frames, marks) == {"a": (1, 61), "b": (2, 61)}
    # a box over both walkers, nearer a: it neither extends nor ends b's run
    frames[30] = [(2, 10, 0, 65, 20)]
    assert ids_kept(frames, marks) == {"a": (1, 61), "b": (2, 61)}
    frames[30] = [(2, 10, 0, 25, 20)]                                   # away from b: the run ends
    assert ids_kept(frames, marks)["b"][1] == 1
    assert ids_kept(frames, marks, min_span=100) == {}
    # one box over both walkers goes to the nearer one, and a second box there to the other
    assert boxes_on_walkers([(7, 0, 0, 70, 20)], {"a": (10, 10), "b": (50, 10)}) == {7: "b"}
    assert boxes_on_walkers([(7, 0, 0, 70, 20), (8, 0, 0, 30, 20)], {"a": (10, 10), "b": (50, 10)}) == {7: "b", 8: "a"}
    assert boxes_on_walkers([(7, 100, 0, 120, 20)], {"a": (10, 10)}) == {7: None}


def test_marked_walkers_table():
    marks = marked_walkers()
    assert sorted(marks) == [0, 12, 25, 37, 50, 62, 75, 87, 100, 112, 125, 137, 150, 162, 175, 187, 199]
    assert sorted({k for m in marks.values() for k in m}) == list("ABCDEFKNTW")
    assert all(0 <= x < 768 and 0 <= y < 576 for m in marks.values() for x, y in m.values())


def vtest_boxes(people):
    """{frame: [(id, x0, y0, x1, y1)]} of the fixture's person tracks."""
    out = {}
    for tid, seen in people.items():
        for n, cx, cy, w, h, _ in seen:
            out.setdefault(n, []).append((tid, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return out


@pytest.mark.slow
@needs_vtest
def test_vtest_most_walkers_keep_one_id_for_50_frames(vtest_tracks):
    # Measured: 5 of the 9 walkers marked over 50+ frames keep one id that long (A 151 frames, B 51, D 175,
    # F 51, N 63); C 25 (hidden behind the lamp post's sign for 100 frames, then in a group of three with A
    # and N: his old id is gone, his new one passes from W), W 26 (his id passes to C, standing behind the
    # sign, as W walks behind him; a new one after), E none (beside D: the detector gives the couple one
    # box), T none (25-40 px tall). The tracker of before (an id only after 3 detections in a row) also
    # kept 5, not the same: C 50 instead of N (its id passed to A where the three met). The detector finds
    # 60 of the 111 marks (54 %) on their frame; what is missing is detections more than association.
    people, _, _ = vtest_tracks
    kept = ids_kept(vtest_boxes(people), marked_walkers())
    assert len(kept) == 9
    assert 2 * sum(n >= KEEP_FRAMES for _, n in kept.values()) > len(kept), kept      # most of them
    assert len({tid for tid, n in kept.values() if n >= KEEP_FRAMES}) == sum(n >= KEEP_FRAMES for _, n in kept.values())
    short = [i for i, v in people.items() if len(v) < 10]
    assert len(short) <= 3, short                    # no id churn: few ids that live less than a second


@pytest.mark.slow
@needs_vtest
def test_vtest_every_box_is_on_a_marked_walker(vtest_tracks):
    # On the marked frames each person box holds a marked person's torso centre, one box per person.
    people, _, _ = vtest_tracks
    boxes, marks = vtest_boxes(people), marked_walkers()
    stray = [(f, tid) for f in marks for tid, k in boxes_on_walkers(boxes.get(f, []), marks[f]).items() if k is None]
    assert not stray, stray


@pytest.mark.slow
@needs_vtest
def test_vtest_no_box_on_empty_background(vtest_tracks):
    # Foreground share of each person box against the video's median background: 0.16-0.6 on the people
    # (a person fills ~half of their box); HOG's 188x375 false box had 0.02-0.04 for 14 frames.
    people, _, _ = vtest_tracks
    low = [(i, p[0], round(p[5], 3)) for i, v in people.items() for p in v if p[5] < 0.1]
    assert not low, low


@pytest.mark.slow
@needs_vtest
def test_vtest_no_jumps(vtest_tracks):
    # A brisk walk, 2 m/s, is 1.2 body heights a second: 0.12 of the box height per frame at 10 fps. With
    # the detector's jitter the centre may move up to 0.3 box heights from one frame to the next; an id
    # passed to a neighbour walking beside (~0.4 box heights away) or further moves more. Measured max 0.20
    # (16 px). HOG before: 115 px, 0.33 of its (padded, 375 px) box.
    people, _, _ = vtest_tracks
    jumps = []
    for i, v in people.items():
        for a, b in zip(v, v[1:]):
            if b[0] == a[0] + 1:
                jumps.append((math.hypot(b[1] - a[1], b[2] - a[2]) / max(a[4], b[4]), i, b[0]))
    assert jumps and max(jumps)[0] <= 0.3, max(jumps)


@pytest.mark.slow
@needs_vtest
def test_vtest_background_alone_gives_no_track(svc, vtest_tracks):
    # the empty square (the median background: lamp post, tripod, cones, the cloth on the grass), 20 frames
    _, _, bg = vtest_tracks
    rgb = np.ascontiguousarray(cv2.cvtColor(bg, cv2.COLOR_BGR2RGB))
    state = {}
    for n in range(20):
        assert list(track_frame(svc, rgb, state, n).objects) == []


@needs_vtest
def test_frame_high_windows_take_no_group_for_one_large_person():
    # vtest frame 113: a frame-high window saw the walkers by the lamp post as one person twice their size
    # (body square 194 px of the 576 px window, verified on its crop at 0.63); windows now keep large people
    # only (the side-by-side photo's: 0.58-0.9 of the window), the tiles find the walkers
    from workers.vision import person_detector as pdet
    cap = cv2.VideoCapture(VTEST)
    cap.set(cv2.CAP_PROP_POS_FRAMES, 113)
    ok, bgr = cap.read()
    cap.release()
    assert ok
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    det = pdet.PersonDetector(threads=1)
    try:
        assert det.detect(rgb) == []
        people = pdet.detect_people(det, rgb, "auto")
    finally:
        det.close()
    assert len(people) >= 3 and all(p.box[3] - p.box[1] < 0.2 for p in people)
    assert not any(p.source.startswith("window") for p in people)


def gesture_frames():
    return [np.ascontiguousarray(cv2.cvtColor(cv2.imread(os.path.join(ASSETS, f"video/gestures_part1/frame_{i:02d}.png")),
                                              cv2.COLOR_BGR2RGB)) for i in range(21)]


def test_gesture_frames_one_face_one_person(svc):
    state = {}
    ids = {"face": set(), "person": set()}
    for n, rgb in enumerate(gesture_frames()):
        r = track_frame(svc, rgb, state, n)
        assert sorted(o.label for o in r.objects) == ["face", "person"], n
        box = {o.label: o.bbox for o in r.objects}
        f, p = box["face"], box["person"]
        assert p.x <= f.x and f.x + f.width <= p.x + p.width + 1e-6 and p.y <= f.y
        for o in r.objects:
            ids[o.label].add(o.track_id)
            assert len(o.trajectory) == min(n + 1, 30)
    assert len(ids["face"]) == 1 and len(ids["person"]) == 1 and ids["face"] != ids["person"]


@pytest.mark.parametrize("meta,labels", [({"track": "people"}, ["person"]), ({"track": "faces"}, ["face"]),
                                         ({"track": "faces,people"}, ["face", "person"]),
                                         ({"detect": "faces"}, ["face"])])
def test_track_metadata_chooses_what_is_tracked(svc, meta, labels):
    state = {}
    for n, rgb in enumerate(gesture_frames()[:2]):
        r = track_frame(svc, rgb, state, n, **meta)
    assert sorted(o.label for o in r.objects) == labels


@pytest.mark.parametrize("meta,words", [({"track": "cars"}, "track"), ({"people_detector": "hog"}, "HOG"),
                                        ({"person_tiles": "maybe"}, "person_tiles"),
                                        ({"face_model": "tiny"}, "face_model")])
def test_bad_tracking_metadata(svc, meta, words):
    rgb = gesture_frames()[0]
    with pytest.raises(WorkerError) as ei:
        track_frame(svc, rgb, {}, 3, **meta)
    assert ei.value.code == "INVALID_ARGUMENT" and words in ei.value.message and "frame 3" in ei.value.message
