"""People and face tracking: the tracker on synthetic trajectories, then StreamObjectTracking on real video.

Synthetic (workers/vision/sort_tracker.py): the Hungarian assignment against brute force; boxes moving
at constant velocity with noise keep one id each through crossings, occlusions and missed detections;
a one-frame spurious box never gets an id; low-score boxes keep a track alive but start none; a track
deleted after `max_age` frames comes back with a new id (ids are never reused).
"""
import itertools

import numpy as np
import pytest

from workers.vision import sort_tracker as st


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


def test_ids_are_never_reused_after_max_age():
    w = Walker(0, 100, 3, 0)
    out = run_scene(st.ByteTracker("person", max_age=5), [w], 60, drop=lambda n, i: 20 <= n < 30)
    assert set(out[19]) == {1} and set(out[59]) == {2}
    assert ids_of(out, 0) == {1, 2}


def test_shared_id_counter_and_trajectory_length():
    ids = itertools.count(1)
    faces, people = st.ByteTracker("face", ids=ids, trajectory_len=5), st.ByteTracker("person", ids=ids)
    a = faces.update([(10, 10, 20, 20)], [0.9])
    b = people.update([(100, 10, 40, 120)], [0.9])
    assert [t.track_id for t in a] == [1] and [t.track_id for t in b] == [2]
    for n in range(1, 9):
        a = faces.update([(10 + n, 10, 20, 20)], [0.9])
    assert len(a[0].trajectory) == 5 and a[0].trajectory[-1] == a[0].box
