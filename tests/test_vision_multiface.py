"""Face mesh and iris on every face (workers/vision/face_landmarks.py): detect, then landmark each face.

Before, StreamFaceMesh ran the legacy whole-frame face mesh, whose short-range detector sees only
large, close faces: 1 mesh on the five-face group photo, 0 on messi5 and basketball1. Here every face
the service's detector finds gets a mesh on its own crop. Checked on real media with the face regions
measured by hand in tests/test_vision_faces.py: each face gets exactly one mesh, whose landmarks lie
in that face's region (grown by 10 % of its side: the mesh's forehead and jaw line reach slightly past
the measured hairline/cheeks); `max_faces` caps the count; no mesh on the negatives; a stream keeps
one id per face (the gesture frames, carphone decoded with PyAV, a panning group photo), gives a lost
face its id back, numbers a new face next, and runs the detector only when it can add a face.
"""
import contextlib
import math

import cv2
import numpy as np
import pytest

from protos import ml_inference_pb2 as pb
from tests import video_media
from tests.test_vision_faces import (ASTRONAUT, BASKETBALL_FRONTAL, BASKETBALL_PROFILE, CARPHONE_0, GESTURE_05, MESSI,
                                     NEGATIVES, PORTRAITS, group_photo, inside, rgb_of)
from workers.context import WorkerError, make_test_context
from workers.vision import face_landmarks, face_search, solutions
from workers.vision.service import VisionService

SVC = "ml.MediapipeService/"
MARGIN = 0.10


@pytest.fixture(scope="module")
def svc():
    s = VisionService({"max_frame_bytes": 64 * 2**20})
    yield s
    s.close()


class Stream:
    """One StreamFaceMesh / StreamIrisTracking stream on the handler, its state closed like the worker does."""

    def __init__(self, svc, method="StreamFaceMesh"):
        self.svc, self.method, self.state, self.n = svc, method, {}, 0

    def send(self, rgb, **meta):
        h, w = rgb.shape[:2]
        req = pb.VideoFrame(format="rgb", width=w, height=h, frame_number=self.n, timestamp_ms=40 * self.n,
                            metadata=meta)
        self.n += 1
        ctx, _ = make_test_context(SVC + self.method, payload=req.SerializeToString(), frame=rgb.tobytes(),
                                   stream_state=self.state, stream="mf-1")
        out = self.svc.handlers()[SVC + self.method](ctx)
        cls = pb.FaceMeshResponse if self.method == "StreamFaceMesh" else pb.IrisTrackingResponse
        return cls.FromString(out)

    @property
    def tracker(self) -> face_landmarks.FaceTracker:
        return self.state["face_tracker"]

    def close(self):
        for v in self.state.values():
            if hasattr(v, "close"):
                v.close()


def meshes_of(svc, rgb, **meta):
    s = Stream(svc)
    try:
        return s.send(rgb, **meta).faces
    finally:
        s.close()


def pts_px(lms, w, h):
    return np.array([(p.x * w, p.y * h) for p in lms])


def region_of(points, regions):
    """The region holding the centre of the 468 face points (None if none)."""
    c = points[:468].mean(axis=0)
    hits = [r for r in regions if inside(c, r)]
    return hits[0] if len(hits) == 1 else None


def check_in_region(points, r):
    side = max(r[2] - r[0], r[3] - r[1])
    m = MARGIN * side
    assert (points[:, 0] >= r[0] - m).all() and (points[:, 0] <= r[2] + m).all(), f"landmarks leave {r} in x"
    assert (points[:, 1] >= r[1] - m).all() and (points[:, 1] <= r[3] + m).all(), f"landmarks leave {r} in y"
    # the mesh covers the face, not a part of it
    assert np.ptp(points[:468, 0]) > 0.5 * (r[2] - r[0]) and np.ptp(points[:468, 1]) > 0.5 * (r[3] - r[1])


def check_meshes(found, w, h, required, allowed=()):
    """Each required region holds exactly one mesh, whose landmarks lie in it; every mesh is on a face region."""
    seen = []
    for f in found:
        assert len(f.landmarks) == 478 and 0.5 <= f.confidence <= 1.0
        p = pts_px(f.landmarks, w, h)
        r = region_of(p, [*required, *allowed])
        assert r is not None, f"mesh centred at {p[:468].mean(0)} is on no face"
        check_in_region(p, r)
        seen.append(r)
    for r in required:
        assert seen.count(r) == 1, f"face region {r}: {seen.count(r)} meshes"


# ------------------------------------------------------------------ one mesh per face, in images
@pytest.mark.parametrize("rel,region", PORTRAITS + [("images/messi5.jpg", MESSI)])
def test_one_mesh_on_each_portrait_and_small_face(svc, rel, region):
    """messi5's face (~45 px, three-quarter, looking down) had no mesh before."""
    rgb = rgb_of(rel)
    check_meshes(meshes_of(svc, rgb), rgb.shape[1], rgb.shape[0], [region])


def test_basketball_small_frontal_face(svc):
    """The frontal face is ~45 px in a 640 px frame (no mesh before); the profile face may have one."""
    rgb = rgb_of("images/basketball1.png")
    check_meshes(meshes_of(svc, rgb), 640, 480, [BASKETBALL_FRONTAL], allowed=[BASKETBALL_PROFILE])


def test_carphone_frame_decoded_with_pyav(svc):
    rgb = video_media.carphone(1)[0]
    check_meshes(meshes_of(svc, rgb), 176, 144, [CARPHONE_0])


def test_group_photo_every_face_left_to_right(svc):
    """Five faces, 50-420 px, in a 2560x1600 photo: one mesh before, five now, numbered left to right."""
    rgb, regions = group_photo()
    h, w = rgb.shape[:2]
    found = meshes_of(svc, rgb, max_faces="5")
    check_meshes(found, w, h, regions)
    assert [f.track_id for f in found] == [1, 2, 3, 4, 5]
    xs = [pts_px(f.landmarks, w, h)[:468, 0].mean() for f in found]
    assert xs == sorted(xs)


def test_max_faces_caps_the_count(svc):
    rgb, regions = group_photo()
    h, w = rgb.shape[:2]
    for meta, n in (({}, face_landmarks.DEFAULT_MAX_FACES), ({"max_faces": "2"}, 2), ({"max_faces": "1"}, 1)):
        found = meshes_of(svc, rgb, **meta)
        assert len(found) == n, meta
        check_meshes(found, w, h, [], allowed=regions)
        assert len({region_of(pts_px(f.landmarks, w, h), regions) for f in found}) == n    # distinct faces


@pytest.mark.parametrize("rel", NEGATIVES)
def test_no_mesh_on_negatives(svc, rel):
    assert len(meshes_of(svc, rgb_of(rel))) == 0


def test_crop_landmarks_match_the_whole_frame_mesh():
    """Where the legacy whole-frame mesh sees the face (a large portrait), the crop's landmarks mapped back
    agree with it: x/y within 1.5 % of the face's size on average, z on the same scale (depth range within
    5 %) - the crop's rotation, scale and offset are undone exactly."""
    from mediapipe.python.solutions import face_mesh
    det = solutions.create("face_detection_short", True)
    tracker = face_landmarks.FaceTracker()
    try:
        for rel in ("images/astronaut.png", "images/grace_hopper.jpg"):
            rgb = rgb_of(rel)
            h, w = rgb.shape[:2]
            with face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as fm:
                ref = np.array([(p.x, p.y, p.z) for p in fm.process(rgb).multi_face_landmarks[0].landmark])
            face = face_search.to_face(face_search.run_model(det, rgb)[0], w, h)
            m = face_landmarks.landmark(tracker.solution(), det, rgb, face_landmarks.roi_from_face(face, w, h))
            size = max(np.ptp(ref[:468, 0]) * w, np.ptp(ref[:468, 1]) * h)
            err = np.linalg.norm((m.points[:, :2] - ref[:, :2]) * (w, h), axis=1)
            assert err.mean() < 0.015 * size, (rel, err.mean(), size)
            assert abs(np.ptp(m.points[:, 2]) / np.ptp(ref[:, 2]) - 1) < 0.05
    finally:
        tracker.close()
        det.close()


def test_crop_transform_round_trip():
    """to_frame undoes the crop's affine (rotation, scale, offset) for any ROI, z scaled by the crop's side."""
    rng = np.random.default_rng(1)
    w, h, side = 640, 480, face_landmarks.CROP_SIDE
    for _ in range(50):
        roi = face_landmarks.Roi(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 600), rng.uniform(-3, 3))
        m = face_landmarks.crop_transform(roi)
        frame_px = rng.uniform(0, 1, (10, 2)) * (w, h)
        crop_px = frame_px @ m[:, :2].T + m[:, 2]
        z = rng.uniform(-0.1, 0.1, 10)
        back = face_landmarks.to_frame(np.column_stack([crop_px / side, z]), m, roi, w, h)
        assert np.allclose(back[:, 0] * w, frame_px[:, 0]) and np.allclose(back[:, 1] * h, frame_px[:, 1])
        assert np.allclose(back[:, 2], z * roi.side / w)
    # the crop is upright: the ROI's eye line maps to a horizontal line
    roi = face_landmarks.Roi(300, 200, 100, math.radians(30))
    m = face_landmarks.crop_transform(roi)
    a, b = np.array([300, 200]), np.array([300 + math.cos(roi.angle) * 40, 200 + math.sin(roi.angle) * 40])
    ca, cb = m[:, :2] @ a + m[:, 2], m[:, :2] @ b + m[:, 2]
    assert abs(ca[1] - cb[1]) < 1e-9 and cb[0] > ca[0] and np.allclose(ca, [side / 2, side / 2])


def test_a_tilted_face_is_landmarked(svc):
    """The crop follows the eye line: the astronaut turned by 40 degrees still gets its mesh on the face."""
    rgb0 = rgb_of("images/astronaut.png")
    rot = cv2.getRotationMatrix2D((256, 256), 40, 1.0)
    rgb = np.ascontiguousarray(cv2.warpAffine(rgb0, rot, (512, 512)))
    corners = np.array([[ASTRONAUT[0], ASTRONAUT[1], 1], [ASTRONAUT[2], ASTRONAUT[1], 1],
                        [ASTRONAUT[0], ASTRONAUT[3], 1], [ASTRONAUT[2], ASTRONAUT[3], 1]]) @ rot.T
    region = (*corners.min(0), *corners.max(0))      # the turned face's bounding region
    found = meshes_of(svc, rgb)
    assert len(found) == 1
    check_in_region(pts_px(found[0].landmarks, 512, 512), region)


# ------------------------------------------------------------------ streams: tracks and ids
def test_gesture_stream_keeps_one_face_id_and_tracks_without_the_detector(svc):
    """21 gesture frames (hand waving, blurred transitions): one face, id 1 on every frame. With max_faces=1
    and the face never lost, the detector runs on the first frame only: every later crop comes from the
    previous frame's landmarks."""
    s = Stream(svc)
    try:
        for i, rgb in enumerate(video_media.gestures()):
            r = s.send(rgb, max_faces="1")
            assert [f.track_id for f in r.faces] == [1], f"frame {i}"
            if i == 5:
                check_meshes(r.faces, 320, 240, [GESTURE_05])
        assert s.tracker.detections == 1
    finally:
        s.close()


def test_gesture_stream_redetects_while_below_max_faces(svc):
    """With room for more faces (max_faces 4, one face seen), the detector looks again every REDETECT_EVERY
    frames for faces entering the frame, and adds nothing here."""
    s = Stream(svc)
    try:
        for rgb in video_media.gestures():
            assert [f.track_id for f in s.send(rgb).faces] == [1]
        assert s.tracker.detections == 1 + (21 - 1) // face_landmarks.REDETECT_EVERY
    finally:
        s.close()


def test_carphone_stream_one_id_and_meshes_on_the_face(svc):
    """carphone (PyAV-decoded, moving head, mouth wide open): one id on all 120 frames, and every 10th frame's
    mesh holds the centre of the detector's face box (face_search on that frame) and vice versa."""
    det = {k: solutions.create(k, True) for k in ("face_detection_short", "face_detection_full")}
    s = Stream(svc)
    try:
        for i, rgb in enumerate(video_media.carphone()):
            r = s.send(rgb)
            assert [f.track_id for f in r.faces] == [1], f"frame {i}"
            if i % 10 == 0:
                (face,) = face_search.search(lambda k: contextlib.nullcontext(det[k]), rgb)
                bx, by, bw, bh = (np.array(face.box) * (176, 144, 176, 144)).tolist()
                p = pts_px(r.faces[0].landmarks, 176, 144)
                c = p[:468].mean(0)
                assert bx <= c[0] <= bx + bw and by <= c[1] <= by + bh, f"frame {i}"
                x0, y0 = p[:468].min(0)
                x1, y1 = p[:468].max(0)
                assert x0 <= bx + bw / 2 <= x1 and y0 <= by + bh / 2 <= y1, f"frame {i}"
    finally:
        s.close()
        for v in det.values():
            v.close()


def test_a_lost_face_gets_its_id_back_and_another_face_a_new_one(svc):
    """Grey frames hide the face: no mesh; when it comes back within MAX_MISSED frames it is the same track
    (id 1); after a longer gap it is a new face (id 2): an id is never given to another face."""
    gest = video_media.gestures()
    grey = np.full_like(gest[0], 128)
    s = Stream(svc)
    try:
        ids = [[f.track_id for f in s.send(f).faces] for f in gest[:3] + [grey] * 3 + gest[3:6]]
        assert ids == [[1]] * 3 + [[]] * 3 + [[1]] * 3
        ids = [[f.track_id for f in s.send(f).faces] for f in [grey] * (face_landmarks.MAX_MISSED + 1) + gest[6:8]]
        assert ids == [[]] * (face_landmarks.MAX_MISSED + 1) + [[2]] * 2
    finally:
        s.close()


def test_group_stream_ids_follow_their_faces(svc):
    """The group photo panning 12 px a frame for 6 frames: five tracks, each id on the same face throughout;
    then a face that enters (the astronaut pasted into an empty area) gets id 6 within REDETECT_EVERY frames."""
    rgb0, regions0 = group_photo()
    h, w = rgb0.shape[:2]
    s = Stream(svc)
    try:
        owner = {}
        for k in range(6):
            dx = 12 * k
            rgb = np.ascontiguousarray(np.roll(rgb0, dx, axis=1))
            regions = [(a + dx, b, c + dx, d) for a, b, c, d in regions0]
            r = s.send(rgb, max_faces="8")
            check_meshes(r.faces, w, h, regions)
            for f in r.faces:
                i = regions.index(region_of(pts_px(f.landmarks, w, h), regions))
                assert owner.setdefault(f.track_id, i) == i, f"frame {k}: id {f.track_id} moved to face {i}"
        assert sorted(owner) == [1, 2, 3, 4, 5]
        astro = rgb_of("images/astronaut.png")
        rgb = np.ascontiguousarray(np.roll(rgb0, 60, axis=1))
        rgb[900:1412, 300:812] = astro
        new_region = (300 + ASTRONAUT[0], 900 + ASTRONAUT[1], 300 + ASTRONAUT[2], 900 + ASTRONAUT[3])
        regions = [(a + 60, b, c + 60, d) for a, b, c, d in regions0]
        for k in range(face_landmarks.REDETECT_EVERY):
            r = s.send(rgb, max_faces="8")
        check_meshes(r.faces, w, h, [*regions, new_region])
        assert [f.track_id for f in r.faces] == [1, 2, 3, 4, 5, 6]
        assert region_of(pts_px(r.faces[-1].landmarks, w, h), [new_region]) == new_region
    finally:
        s.close()


def test_stream_state_closes_the_tracker(svc):
    s = Stream(svc)
    s.send(rgb_of("images/grace_hopper.jpg"))
    tracker = s.tracker
    assert tracker._solution is not None
    s.close()
    assert tracker._solution is None


# ------------------------------------------------------------------ iris on every face
def test_iris_on_every_face_of_the_group(svc):
    rgb, regions = group_photo()
    h, w = rgb.shape[:2]
    s = Stream(svc, "StreamIrisTracking")
    try:
        r = s.send(rgb, max_faces="5")
    finally:
        s.close()
    faces = [r, *r.more_faces]
    assert [f.track_id for f in faces] == [1, 2, 3, 4, 5]
    seen = []
    for f in faces:
        assert sorted(e.eye for e in f.eyes) == ["left", "right"]
        irises = pts_px([e.iris_landmarks[0] for e in f.eyes], w, h)
        reg = [rr for rr in regions if all(inside(p, rr) for p in irises)]
        assert len(reg) == 1
        seen.append(reg[0])
        left = next(e for e in f.eyes if e.eye == "left")
        right = next(e for e in f.eyes if e.eye == "right")
        assert left.iris_landmarks[0].x > right.iris_landmarks[0].x       # unmirrored, upright faces
        assert f.combined_gaze.z < 0 and abs(f.head_pose.roll) < 15
    assert sorted(seen) == sorted(regions)


def test_iris_single_face_and_none(svc):
    s = Stream(svc, "StreamIrisTracking")
    try:
        r = s.send(rgb_of("images/messi5.jpg"))
        assert r.track_id == 1 and len(r.eyes) == 2 and len(r.more_faces) == 0
        r = s.send(rgb_of("images/happyfish.jpg"))
        assert r.track_id == 0 and len(r.eyes) == 0 and len(r.more_faces) == 0
    finally:
        s.close()


# ------------------------------------------------------------------ bad metadata
@pytest.mark.parametrize("method", ["StreamFaceMesh", "StreamIrisTracking"])
@pytest.mark.parametrize("meta,key", [({"max_faces": "0"}, "max_faces"), ({"max_faces": "many"}, "max_faces"),
                                      ({"max_faces": "17"}, "max_faces"), ({"face_model": "medium"}, "face_model")])
def test_bad_metadata_is_invalid_argument(svc, method, meta, key):
    s = Stream(svc, method)
    try:
        with pytest.raises(WorkerError) as ei:
            s.send(rgb_of("images/grace_hopper.jpg"), **meta)
    finally:
        s.close()
    assert ei.value.code == "INVALID_ARGUMENT"
    assert key in ei.value.message and "frame" in ei.value.message


# ------------------------------------------------------------------ once through the real service
@pytest.mark.integration
@pytest.mark.slow
def test_every_face_through_the_service():
    """The group photo as jpeg frames through run.py: five meshes with ids 1-5 on both frames, max_faces from the
    frame's metadata, iris for every face; a bad max_faces ends the stream with INVALID_ARGUMENT."""
    import grpc
    from protos import ml_inference_pb2_grpc as pbg
    from tests.service import start_service
    rgb, regions = group_photo()
    h, w = rgb.shape[:2]
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok

    def frames(n, **meta):
        for i in range(n):
            yield pb.VideoFrame(frame_data=jpeg.tobytes(), format="jpeg", frame_number=i, metadata=meta)

    with start_service(args=["--pools", "vision", "--worker-threads", "2"], wait_service="ml.MediapipeService") as s:
        stub = pbg.MediapipeServiceStub(s.channel())
        out = list(stub.StreamFaceMesh(frames(2, max_faces="5"), timeout=120))
        for r in out:
            assert [f.track_id for f in r.faces] == [1, 2, 3, 4, 5]
            check_meshes(r.faces, w, h, regions)
        (r,) = stub.StreamIrisTracking(frames(1, max_faces="5"), timeout=120)
        assert [r.track_id] + [f.track_id for f in r.more_faces] == [1, 2, 3, 4, 5]
        with pytest.raises(grpc.RpcError) as ei:
            list(stub.StreamFaceMesh(frames(1, max_faces="0"), timeout=60))
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_faces" in ei.value.details()
