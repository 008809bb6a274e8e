"""Every face and every person: per-frame cost of the multi-face mesh and the multi-person pose against the
single-target path, for frames with 1, 2, 3, 5 faces and 1, 2, 4 people, in one run, in-process.

Multi-target paths (the worker's handlers, called through workers.vision.service.VisionService with
make_test_context, raw rgb frames; the time includes the response's serialisation):
  - faces: StreamFaceMesh (workers/vision/face_landmarks.py: face_search detection, then one mesh per face
    on its crop). Stream mode: one stream, metadata max_faces = N (every face tracked from its last mesh;
    with N of N tracked the detector does not run again). Image mode: every frame detected afresh (the
    stream's face tracker emptied before each frame, its MediaPipe instances kept, so no graph is built
    in the timing), i.e. what a one-image call does.
  - people: DetectPose (image mode) and StreamPoseTracking (stream mode, defaults: max_poses 4, the person
    detector every 10 frames) (workers/vision/multipose.py, person_detector.py, pose_landmarker.py).
Single-target baseline (what the service ran before): the legacy MediaPipe solution on the whole frame,
solution.process only: mp.solutions.face_mesh (max_num_faces=1, iris refinement, as the old StreamFaceMesh)
and mp.solutions.pose (model_complexity=1), static_image_mode for the image rows, tracking mode for the
stream rows; measured on the frame with one face / one person, where it returns that one target. So
ratio = (every target, the new way) / (one target, the old way); the note also gives the legacy solution
on the row's own frame (its time and how many it returned).

Frames (built from the shared photos as the tests build them):
  - faces: tests/test_vision_faces.py's group photo (2560x1600, five portraits' faces of ~420, 100, 115,
    75, 50 px); N faces = the first N kept, the others painted over with the background grey.
  - people: tests/test_vision_multiperson.py's side-by-side photo (messi5 + basketball1's left man, 768x480);
    1 person = messi alone (the man's strip grey). The people rows use 1536x480 frames (1 / 2 people at the
    left, grey at the right; 4 = two copies of the side-by-side photo) so the frame size, and with it the
    person detector's windows, is the same for every N; the legacy solution finds nobody on 1536x480 (its
    people are too small for its whole-frame detector), so the baseline is measured on the 768x480 photo
    of messi alone, and one more row runs the multi-person path on that same 768x480 frame.
Per-target marginal cost: the least-squares slope of ms/frame over N (its ratio: to the baseline's ms).
Rows report ms per frame (mean; the stream means include the periodic detector runs).

People tracking (StreamObjectTracking, metadata track=people, one stream): the first 200 frames of vtest.avi
(../shared/assets; street, 768x576, small walkers), run twice in one process: with the person tracker's
options of before (ByteTrack's rule: an id only after 3 detections in a row) as the baseline, then as now (workers/vision/tracking.py TRACKER_OPTIONS). Rows: ms per frame of the handler
(person detector with tiles, the look-again crops, the tracker), and how many of the walkers marked by hand
over 50+ frames (tests/assets/video/vtest_walkers.csv) keep one id for 50 frames or more (as
tests/test_vision_people_tracking.py counts them).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from bench.common import row  # noqa: E402

SVC = "ml.MediapipeService/"
FACE_COUNTS = (1, 2, 3, 5)
PEOPLE_COUNTS = (1, 2, 4)
GREY_FACES, GREY_PEOPLE = 170, 128     # the backgrounds of the two composed photos
BENCH = "people"


# ------------------------------------------------------------------ frames
def face_frames() -> dict:
    """{N: rgb 2560x1600 with the first N faces of the group photo}."""
    from tests.test_vision_faces import group_photo
    rgb, regions = group_photo()
    out = {}
    for n in FACE_COUNTS:
        img = rgb.copy()
        for x0, y0, x1, y1 in regions[n:]:          # paint the face over, with 40 % of its size around it
            mx, my = 0.4 * (x1 - x0), 0.4 * (y1 - y0)
            img[int(y0 - my):int(y1 + my), int(x0 - mx):int(x1 + mx)] = GREY_FACES
        out[n] = np.ascontiguousarray(img)
    return out


def people_frames() -> tuple[dict, np.ndarray]:
    """({N: rgb 1536x480 with N people}, the 768x480 photo of one person)."""
    from tests.test_vision_multiperson import side_by_side
    pair, _ = side_by_side()
    one = pair.copy()
    one[:, 548:] = GREY_PEOPLE                      # the man's strip (side_by_side puts him at x >= 548)
    grey = np.full_like(pair, GREY_PEOPLE)
    frames = {1: np.hstack([one, grey]), 2: np.hstack([pair, grey]), 4: np.hstack([pair, pair])}
    return {n: np.ascontiguousarray(f) for n, f in frames.items()}, np.ascontiguousarray(one)


# ------------------------------------------------------------------ timing
class _Handlers:
    """The vision worker's handlers, in-process."""

    def __init__(self):
        from workers.vision.service import VisionService
        self.svc = VisionService({"max_frame_bytes": 64 * 2**20})
        self.h = self.svc.handlers()
        self._streams = 0

    def close(self):
        self.svc.close()

    def call(self, method: str, req, rgb: np.ndarray, state=None):
        from workers.context import make_test_context
        ctx, _ = make_test_context(SVC + method, payload=req.SerializeToString(), frame=rgb.tobytes(),
                                   stream_state=state, stream="bench" if state is not None else None)
        return self.h[SVC + method](ctx)

    @staticmethod
    def close_state(state: dict):
        for v in state.values():
            if hasattr(v, "close"):
                v.close()


def _frame_req(rgb, n, meta):
    from protos import ml_inference_pb2 as pb
    h, w = rgb.shape[:2]
    return pb.VideoFrame(format="rgb", width=w, height=h, frame_number=n, timestamp_ms=33 * n, metadata=meta)


def mesh_times(hd: _Handlers, rgb, frames: int, warmup: int, stream: bool, max_faces: int) -> tuple[list, int]:
    """(per-frame seconds, faces in the last answer) of StreamFaceMesh on the same frame repeated."""
    from protos import ml_inference_pb2 as pb
    st, times, found = {}, [], 0
    meta = {"max_faces": str(max_faces)}
    try:
        for i in range(warmup + frames):
            if not stream and "face_tracker" in st:   # image mode: detect afresh, keep the instances
                st["face_tracker"].tracks.clear()
                st["face_tracker"].lost.clear()
            t0 = time.perf_counter()
            r = pb.FaceMeshResponse.FromString(hd.call("StreamFaceMesh", _frame_req(rgb, i, meta), rgb, st))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            found = len(r.faces)
    finally:
        hd.close_state(st)
    return times, found


def pose_times(hd: _Handlers, rgb, frames: int, warmup: int, stream: bool) -> tuple[list, int]:
    """(per-frame seconds, poses in the last answer): DetectPose per frame, or one StreamPoseTracking stream."""
    from protos import ml_inference_pb2 as pb
    st, times, found = {}, [], 0
    h, w = rgb.shape[:2]
    try:
        for i in range(warmup + frames):
            t0 = time.perf_counter()
            if stream:
                data = hd.call("StreamPoseTracking", _frame_req(rgb, i, {}), rgb, st)
            else:
                data = hd.call("DetectPose", pb.ImageRequest(format="rgb", width=w, height=h), rgb)
            r = pb.PoseDetectionResponse.FromString(data)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            found = len(r.poses)
    finally:
        hd.close_state(st)
    return times, found


def legacy_times(kind: str, rgb, frames: int, warmup: int, stream: bool) -> tuple[list, int]:
    """(per-frame seconds, targets returned) of the legacy single-target solution on the whole frame."""
    from workers.vision import solutions
    sol = solutions.create(kind, not stream, **({"max_faces": 1} if kind == "face_mesh" else {}))
    times, found = [], 0
    try:
        for i in range(warmup + frames):
            t0 = time.perf_counter()
            res = sol.process(rgb)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            found = len(res.multi_face_landmarks or []) if kind == "face_mesh" else int(res.pose_landmarks is not None)
    finally:
        sol.close()
    return times, found


def _ms(times) -> float:
    return 1000.0 * float(np.mean(times))


def _slope(ns, ms) -> tuple[float, float]:
    """Least-squares (slope, intercept) of ms over N."""
    a, b = np.polyfit(np.asarray(ns, float), np.asarray(ms, float), 1)
    return float(a), float(b)


# ------------------------------------------------------------------ people tracking (vtest.avi)
TRACK_FRAMES = 200
OLD_PERSON_OPTIONS = dict(high=0.5, low=0.2, new_track=0.6, min_hits=3)   # before: no tentative_misses


def tracking_run(hd: _Handlers, frames: int, options: dict) -> tuple[list, dict]:
    """(per-frame seconds, {frame: [(id, x0, y0, x1, y1)]} of the person boxes) of one StreamObjectTracking
    stream over vtest.avi's first `frames` frames, with the person tracker's `options`."""
    import cv2
    from protos import ml_inference_pb2 as pb
    from tests.test_vision_people_tracking import VTEST
    from workers.vision import tracking
    saved = tracking.TRACKER_OPTIONS["person"]
    tracking.TRACKER_OPTIONS["person"] = options
    cap = cv2.VideoCapture(VTEST)
    st, times, boxes = {}, [], {}
    try:
        for n in range(frames):
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            h, w = rgb.shape[:2]
            t0 = time.perf_counter()
            r = pb.ObjectTrackingResponse.FromString(
                hd.call("StreamObjectTracking", _frame_req(rgb, n, {"track": "people"}), rgb, st))
            times.append(time.perf_counter() - t0)
            boxes[n] = [(o.track_id, o.bbox.x * w, o.bbox.y * h, (o.bbox.x + o.bbox.width) * w,
                         (o.bbox.y + o.bbox.height) * h) for o in r.objects]
    finally:
        cap.release()
        hd.close_state(st)
        tracking.TRACKER_OPTIONS["person"] = saved
    return times, boxes


def _ms_row(metric: str, value_ms: float, base_ms: float, note: str) -> dict:
    """A per-frame cost row in ms, rounded as this bench reports them, against the legacy baseline."""
    return row(BENCH, metric, round(value_ms, 2), round(base_ms, 2), unit="ms", ratio=round(value_ms / base_ms, 2),
               note=note)


def tracking_rows(hd: _Handlers, frames: int = TRACK_FRAMES) -> list:
    """The people-tracking rows: before / now, ms per frame and walkers keeping one id for 50+ frames."""
    from tests.test_vision_people_tracking import KEEP_FRAMES, VTEST, ids_kept, marked_walkers
    from workers.vision import tracking
    if not os.path.exists(VTEST):
        return [{"bench": BENCH, "metric": "people tracking", "value": "", "baseline": "", "ratio": "", "goal": "",
                 "unit": "", "note": f"skipped: {VTEST} is missing"}]
    marks = {f: m for f, m in marked_walkers().items() if f < frames}
    runs = {}
    for name, options in (("before", OLD_PERSON_OPTIONS), ("now", dict(tracking.TRACKER_OPTIONS["person"]))):
        times, boxes = tracking_run(hd, frames, options)
        kept = ids_kept(boxes, marks)
        runs[name] = (_ms(times), kept, sum(n >= KEEP_FRAMES for _, n in kept.values()),
                      len({i for b in boxes.values() for i, *_ in b}))
    (b_ms, b_kept, b_n, b_ids), (ms, kept, n_kept, ids) = runs["before"], runs["now"]
    detail = lambda k: ", ".join(f"{w} {n}" for w, (_, n) in sorted(k.items()))   # noqa: E731
    return [
        {"bench": BENCH, "metric": "people tracking ms/frame, vtest.avi 768x576 (track=people)",
         "value": round(ms, 1), "baseline": round(b_ms, 1), "ratio": round(ms / b_ms, 2), "goal": "", "unit": "ms",
         "note": f"StreamObjectTracking, first {frames} frames, one stream; baseline: the person tracker's "
                 f"options of before (an id only after 3 detections in a row), same run"},
        {"bench": BENCH, "metric": f"walkers keeping one id >= {KEEP_FRAMES} frames, vtest.avi",
         "value": n_kept, "baseline": b_n, "ratio": round(n_kept / b_n, 2) if b_n else "",
         "goal": f"> {len(kept) / 2:g} (most of {len(kept)})", "unit": "walkers",
         "note": f"of {len(kept)} walkers marked by hand over {KEEP_FRAMES}+ frames (tests/assets/video/"
                 f"vtest_walkers.csv); longest one-id run per walker now: {detail(kept)}; before: "
                 f"{detail(b_kept)}; person ids now {ids}, before {b_ids}"},
    ]


# ------------------------------------------------------------------ rows
def run(quick: bool = True, frames: int | None = None) -> list:
    """`frames` (tests) overrides the measured frames per row: same rows, fast, numbers too noisy to judge by."""
    n_img, n_stream = (5, 20) if quick else (15, 60)     # stream counts: multiples of the redetect period (10)
    if frames:
        n_img, n_stream = frames, frames
    faces, (people, one_person) = face_frames(), people_frames()
    hd = _Handlers()
    rows = []
    try:
        for mode, stream, n in (("image", False, n_img), ("stream", True, n_stream)):
            warm = 1
            how = "tracking mode" if stream else "static"
            # ---- faces
            base_t, base_found = legacy_times("face_mesh", faces[1], n, warm, stream)
            base = _ms(base_t)
            ms_by_n = {}
            for k in FACE_COUNTS:
                t, found = mesh_times(hd, faces[k], n, warm, stream, max_faces=k if stream else 16)
                lt, lfound = (base_t, base_found) if k == 1 else legacy_times("face_mesh", faces[k], n, warm, stream)
                ms_by_n[k] = _ms(t)
                rows.append(_ms_row(f"face mesh ms/frame, {mode}, {k} face{'s' if k > 1 else ''}", ms_by_n[k], base,
                                    f"StreamFaceMesh {'max_faces ' + str(k) if stream else 'detected afresh'}, "
                                    f"2560x1600, n={n}: {found} of {k} meshes; baseline legacy face_mesh "
                                    f"(max_num_faces=1, {how}) on the 1-face frame: {base_found} mesh; "
                                    f"legacy on this frame {_ms(lt):.1f} ms, {lfound} mesh"))
            slope, icpt = _slope(list(ms_by_n), list(ms_by_n.values()))
            rows.append(_ms_row(f"face mesh marginal ms per face, {mode}", slope, base,
                                f"least-squares slope over N={list(FACE_COUNTS)} (intercept {icpt:.1f} ms); "
                                f"baseline: the legacy single-face mesh per frame"))
            if stream:   # the default max_faces (4) on one face: the detector runs every 10 frames
                t, found = mesh_times(hd, faces[1], n, warm, True, max_faces=4)
                rows.append(_ms_row("face mesh ms/frame, stream, 1 face, max_faces 4", _ms(t), base,
                                    f"fewer faces than max_faces: face_search every 10 frames (amortised), n={n}: "
                                    f"{found} mesh"))
            # ---- people
            base_t, base_found = legacy_times("pose", one_person, n, warm, stream)
            base = _ms(base_t)
            method = "StreamPoseTracking" if stream else "DetectPose"
            t, found = pose_times(hd, one_person, n, warm, stream)
            rows.append(_ms_row(f"pose ms/frame, {mode}, 1 person, 768x480 (baseline's frame)", _ms(t), base,
                                f"{method}, n={n}: {found} pose; baseline legacy pose ({how}) on the same frame: "
                                f"{base_found} pose"))
            ms_by_n = {}
            for k in PEOPLE_COUNTS:
                t, found = pose_times(hd, people[k], n, warm, stream)
                lt, lfound = legacy_times("pose", people[k], n, warm, stream)
                ms_by_n[k] = _ms(t)
                rows.append(_ms_row(f"pose ms/frame, {mode}, {k} {'people' if k > 1 else 'person'}", ms_by_n[k], base,
                                    f"{method}{' (detector every 10 frames)' if stream else ''}, 1536x480, n={n}: "
                                    f"{found} of {k} poses; baseline legacy pose ({how}) on the 768x480 1-person "
                                    f"photo: {base_found} pose; legacy on this frame {_ms(lt):.1f} ms, {lfound} pose"))
            slope, icpt = _slope(list(ms_by_n), list(ms_by_n.values()))
            rows.append(_ms_row(f"pose marginal ms per person, {mode}", slope, base,
                                f"least-squares slope over N={list(PEOPLE_COUNTS)} at 1536x480 (intercept "
                                f"{icpt:.1f} ms); baseline: the legacy single-person pose per frame"))
        rows += tracking_rows(hd, frames or TRACK_FRAMES)
    finally:
        hd.close()
    return rows


def run_tracking() -> list:
    """The people-tracking rows alone (`--tracking`)."""
    hd = _Handlers()
    try:
        return tracking_rows(hd)
    finally:
        hd.close()


if __name__ == "__main__":
    for row in (run_tracking() if "--tracking" in sys.argv else run(quick="--full" not in sys.argv)):
        print(row)
