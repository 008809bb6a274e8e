"""Vision handlers on real media, called the way the worker calls them (workers.context test contexts).

Faces on the portraits and none on the fish; 478 mesh points; gaze with head orientation; plausible
joint angles on the full-body photos; the right gesture on the hand photos and gesture frames; the
mask covers the person; stable track ids over the video; template found where it was cut; labels
over frame ranges; bad input -> INVALID_ARGUMENT naming the frame; unsupported -> UNIMPLEMENTED.
"""
import math
import os

import cv2
import numpy as np
import pytest

from protos import ml_inference_pb2 as pb
from workers.context import WorkerError, make_test_context
from workers.vision import iris_gaze
from workers.vision.service import VisionService

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
SVC = "ml.MediapipeService/"


@pytest.fixture(scope="module")
def svc():
    s = VisionService({"max_frame_bytes": 32 * 2**20})
    yield s
    s.close()


def read_bytes(rel):
    with open(os.path.join(ASSETS, rel), "rb") as f:
        return f.read()


def rgb_of(rel):
    return np.ascontiguousarray(cv2.cvtColor(cv2.imread(os.path.join(ASSETS, rel)), cv2.COLOR_BGR2RGB))


def call(svc, method, req, frame=None, state=None, stream="s1", **hdr):
    ctx, _ = make_test_context(SVC + method, payload=req.SerializeToString(), frame=frame,
                               stream_state=state, stream=stream if state is not None else None, **hdr)
    return svc.handlers()[SVC + method](ctx)


def vf(rgb, n=0, **meta):
    h, w = rgb.shape[:2]
    return pb.VideoFrame(format="rgb", width=w, height=h, frame_number=n, timestamp_ms=1000 + 40 * n, metadata=meta)


def video_frames(rel, limit=None):
    cap = cv2.VideoCapture(os.path.join(ASSETS, rel))
    out = []
    while limit is None or len(out) < limit:
        ok, fr = cap.read()
        if not ok:
            break
        out.append(np.ascontiguousarray(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)))
    cap.release()
    return out


def gesture_frames():
    return [rgb_of(f"video/gestures_part1/frame_{i:02d}.png") for i in range(21)]


# ------------------------------------------------------------------ unary
@pytest.mark.parametrize("name,fmt", [("images/astronaut.png", "png"), ("images/grace_hopper.jpg", "jpeg"),
                                      ("images/grace_hopper.jpg", "")])
def test_detect_faces_portraits(svc, name, fmt):
    r = pb.FaceDetectionResponse.FromString(call(svc, "DetectFaces", pb.ImageRequest(format=fmt), read_bytes(name)))
    assert len(r.faces) == 1
    f = r.faces[0]
    assert 0.8 < f.confidence <= 1.0
    assert 0.25 < f.x + f.width / 2 < 0.75 and 0.1 < f.y + f.height / 2 < 0.6
    assert [k.name for k in f.keypoints] == ["right_eye", "left_eye", "nose_tip", "mouth_center",
                                             "right_ear_tragion", "left_ear_tragion"]
    for k in f.keypoints[:4]:    # eyes, nose, mouth inside the box
        assert f.x <= k.x <= f.x + f.width and f.y <= k.y <= f.y + f.height


def test_detect_faces_raw_rgb_and_none_on_fish(svc):
    rgb = rgb_of("images/grace_hopper.jpg")
    h, w = rgb.shape[:2]
    r = pb.FaceDetectionResponse.FromString(call(svc, "DetectFaces", pb.ImageRequest(format="raw", width=w, height=h),
                                                 rgb.tobytes()))
    assert len(r.faces) == 1
    r = pb.FaceDetectionResponse.FromString(call(svc, "DetectFaces", pb.ImageRequest(format="jpeg"),
                                                 read_bytes("images/happyfish.jpg")))
    assert len(r.faces) == 0


def test_detect_faces_small_face_falls_back_to_full_range(svc):
    r = pb.FaceDetectionResponse.FromString(call(svc, "DetectFaces", pb.ImageRequest(format="jpeg"),
                                                 read_bytes("images/messi5.jpg")))
    assert len(r.faces) >= 1 and r.faces[0].width < 0.15


@pytest.mark.parametrize("name,gesture", [("images/open_palm.jpg", "Open_Palm"), ("images/index_up.jpg", "Pointing_Up"),
                                          ("images/fist.jpg", "Closed_Fist")])
def test_detect_hands_gestures_on_photos(svc, name, gesture):
    r = pb.HandDetectionResponse.FromString(call(svc, "DetectHands", pb.ImageRequest(format="jpeg"), read_bytes(name)))
    assert len(r.hands) == 1
    h = r.hands[0]
    assert len(h.landmarks) == 21 and len(h.world_landmarks) == 21
    assert h.handedness in ("Left", "Right") and 0.5 <= h.confidence <= 1.0
    assert [g.name for g in h.gestures] == [gesture]
    assert 0.5 <= h.gestures[0].confidence <= 1.0


def test_half_curl_is_no_standard_gesture(svc):
    r = pb.HandDetectionResponse.FromString(call(svc, "DetectHands", pb.ImageRequest(format="jpeg"),
                                                 read_bytes("images/half_curl.jpg")))
    assert len(r.hands) == 1
    assert not r.hands[0].gestures or r.hands[0].gestures[0].confidence < 0.6


def test_no_hands_on_fish_and_portrait(svc):
    for name in ("images/happyfish.jpg", "images/grace_hopper.jpg"):
        r = pb.HandDetectionResponse.FromString(call(svc, "DetectHands", pb.ImageRequest(), read_bytes(name)))
        assert len(r.hands) == 0, name


def angles_of(resp):
    assert len(resp.poses) == 1
    p = resp.poses[0]
    assert len(p.landmarks) == 33 and len(p.world_landmarks) == 33
    return {a.name: a for a in p.joint_angles}


def test_detect_pose_joint_angles_full_body(svc):
    # basketball1: the man on the left stands upright
    a = angles_of(pb.PoseDetectionResponse.FromString(call(svc, "DetectPose", pb.ImageRequest(format="png"),
                                                           read_bytes("images/basketball1.png"))))
    for j in ("left_elbow", "right_elbow", "left_shoulder", "right_shoulder", "left_hip", "right_hip",
              "left_knee", "right_knee"):
        assert j in a and 0.0 <= a[j].degrees <= 180.0
    for j in ("left_knee", "right_knee", "left_hip", "right_hip"):
        assert a[j].degrees > 140, (j, a[j].degrees)          # standing: legs nearly straight
    for j in ("left_elbow", "right_elbow"):
        assert 50 < a[j].degrees < 150, (j, a[j].degrees)     # holding the ball: elbows bent
    # messi5: striking the ball: one knee clearly bent, the other leg much straighter
    a = angles_of(pb.PoseDetectionResponse.FromString(call(svc, "DetectPose", pb.ImageRequest(format="jpeg"),
                                                           read_bytes("images/messi5.jpg"))))
    knees = sorted([a["left_knee"].degrees, a["right_knee"].degrees])
    assert knees[0] < 120 and knees[1] > 130
    assert a["left_knee"].confidence > 0.5


def test_no_pose_on_fish(svc):
    r = pb.PoseDetectionResponse.FromString(call(svc, "DetectPose", pb.ImageRequest(), read_bytes("images/happyfish.jpg")))
    assert len(r.poses) == 0


# ------------------------------------------------------------------ streams
def test_stream_face_detection_echoes_and_formats(svc):
    rgb = rgb_of("images/astronaut.png")
    st = {}
    for n, (fmt, data) in enumerate([("rgb", rgb.tobytes()), ("bgr", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).tobytes()),
                                      ("rgba", cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA).tobytes()),
                                      ("yuv420", cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes()),
                                      ("png", read_bytes("images/astronaut.png"))]):
        req = vf(rgb, n=n + 1)
        req.format = fmt
        r = pb.FaceDetectionResponse.FromString(call(svc, "StreamFaceDetection", req, data, st))
        assert r.frame_number == n + 1 and r.timestamp_ms == 1000 + 40 * (n + 1)
        assert len(r.faces) == 1 and r.faces[0].confidence > 0.8 and len(r.faces[0].keypoints) == 6
    assert any(k.startswith("mp:") for k in st)   # the stream owns its instance


def test_stream_face_mesh_478(svc):
    rgb = rgb_of("images/grace_hopper.jpg")
    r = pb.FaceMeshResponse.FromString(call(svc, "StreamFaceMesh", vf(rgb, 5), rgb.tobytes(), {}))
    assert r.frame_number == 5 and len(r.faces) == 1
    m = r.faces[0]
    assert len(m.landmarks) == 478
    assert len(m.contours) > 100 and len(m.contours) % 2 == 0 and max(m.contours) < 468
    assert 0.8 < m.confidence <= 1.0
    r = pb.FaceMeshResponse.FromString(call(svc, "StreamFaceMesh", vf(rgb_of("images/happyfish.jpg")),
                                            rgb_of("images/happyfish.jpg").tobytes(), {}))
    assert len(r.faces) == 0


def test_stream_iris_and_gaze_frontal(svc):
    for name in ("images/grace_hopper.jpg", "images/astronaut.png"):
        rgb = rgb_of(name)
        r = pb.IrisTrackingResponse.FromString(call(svc, "StreamIrisTracking", vf(rgb, 2), rgb.tobytes(), {}))
        assert sorted(e.eye for e in r.eyes) == ["left", "right"]
        for e in r.eyes:
            assert len(e.iris_landmarks) == 5 and len(e.eye_landmarks) == 16
            assert e.confidence > 0.5
            g = e.gaze
            assert abs(math.sqrt(g.x ** 2 + g.y ** 2 + g.z ** 2) - 1) < 1e-4 and g.z < 0   # toward the camera
            assert abs(g.yaw) < 25 and abs(g.pitch) < 25
        # the person's left eye is on the image's right side (unmirrored portrait)
        left = next(e for e in r.eyes if e.eye == "left")
        right = next(e for e in r.eyes if e.eye == "right")
        assert left.iris_landmarks[0].x > right.iris_landmarks[0].x
        assert abs(r.combined_gaze.yaw) < 20 and r.combined_gaze.z < 0
        assert abs(r.head_pose.yaw) < 20 and abs(r.head_pose.roll) < 15


def test_gaze_accounts_for_head_rotation(svc):
    """Turn the mesh (eyes fixed in the head) by 25 degrees: head yaw and gaze turn with it; move only the
    irises: the gaze moves but the head does not."""
    from mediapipe.python.solutions import face_mesh
    rgb = rgb_of("images/grace_hopper.jpg")
    h, w = rgb.shape[:2]
    with face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as fm:
        lm = fm.process(rgb).multi_face_landmarks[0]
    pts = np.array([(p.x, p.y, p.z) for p in lm.landmark])
    eyes0, both0, head0 = iris_gaze.analyse(pts, w, h)
    px = pts * np.array([w, h, w])
    c = px[:468].mean(0)
    a = math.radians(25)
    R = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    turned = ((R @ (px - c).T).T + c) / np.array([w, h, w])
    eyes1, both1, head1 = iris_gaze.analyse(turned, w, h)
    assert abs((head1[0] - head0[0]) - (-25)) < 4 or abs((head1[0] - head0[0]) - 25) < 4
    assert abs(abs(both1.yaw - both0.yaw) - 25) < 6          # gaze turns with the head
    shifted = pts.copy()
    for idx in list(range(468, 478)):
        shifted[idx, 0] += 0.012                              # irises move right in the image
    eyes2, both2, head2 = iris_gaze.analyse(shifted, w, h)
    assert abs(head2[0] - head0[0]) < 1e-6
    assert both2.yaw > both0.yaw + 10


def test_stream_hand_tracking_gesture_frames(svc):
    expected = {0: "Thumb_Up", **{i: "Victory" for i in range(2, 12)}, **{i: "Thumb_Up" for i in range(14, 21)}}
    st, right = {}, 0
    for i, rgb in enumerate(gesture_frames()):
        r = pb.HandDetectionResponse.FromString(call(svc, "StreamHandTracking", vf(rgb, i), rgb.tobytes(), st))
        assert r.frame_number == i and len(r.hands) == 1
        names = [g.name for g in r.hands[0].gestures]
        assert len(names) <= 1
        if i in expected and names == [expected[i]]:
            right += 1
    assert right >= 16, f"{right}/{len(expected)} gesture frames right"


def test_stream_pose_tracking(svc):
    rgb = rgb_of("images/messi5.jpg")
    st = {}
    for n in range(3):
        r = pb.PoseDetectionResponse.FromString(call(svc, "StreamPoseTracking", vf(rgb, n), rgb.tobytes(), st))
        assert r.frame_number == n and len(r.poses) == 1
        assert len(r.poses[0].joint_angles) >= 8 and r.poses[0].confidence > 0.5


def test_stream_holistic(svc):
    rgb = gesture_frames()[5]
    r = pb.HolisticTrackingResponse.FromString(call(svc, "StreamHolisticTracking", vf(rgb, 9), rgb.tobytes(), {}))
    assert r.frame_number == 9
    assert len(r.face.landmarks) == 478 and r.face.confidence > 0.5
    assert len(r.pose.landmarks) == 33 and len(r.pose.joint_angles) >= 8
    assert len(r.hands) >= 1 and all(len(h.landmarks) == 21 for h in r.hands)
    assert any(g.name == "Victory" for h in r.hands for g in h.gestures)
    # the same handedness convention as StreamHandTracking (mirrored by default)
    hand = pb.HandDetectionResponse.FromString(call(svc, "StreamHandTracking", vf(rgb, 9), rgb.tobytes(), {}))
    victory = next(h for h in r.hands if h.gestures and h.gestures[0].name == "Victory")
    assert victory.handedness == hand.hands[0].handedness
    r2 = pb.HolisticTrackingResponse.FromString(call(svc, "StreamHolisticTracking", vf(rgb, 9, mirrored="false"),
                                                     rgb.tobytes(), {}))
    assert {h.handedness for h in r2.hands} != {h.handedness for h in r.hands}


def test_segmentation_mask_covers_person(svc):
    rgb = rgb_of("images/grace_hopper.jpg")
    h, w = rgb.shape[:2]
    st = {}
    r = pb.SegmentationResponse.FromString(call(svc, "StreamSelfieSegmentation", vf(rgb, 1), rgb.tobytes(), st))
    assert (r.width, r.height, r.format) == (w, h, "binary")
    mask = np.frombuffer(r.mask, np.uint8).reshape(h, w)
    face = pb.FaceDetectionResponse.FromString(call(svc, "DetectFaces", pb.ImageRequest(format="jpeg"),
                                                    read_bytes("images/grace_hopper.jpg"))).faces[0]
    cx, cy, fw, fh = (face.x + face.width / 2) * w, (face.y + face.height / 2) * h, face.width * w, face.height * h
    x0, y0, x1, y1 = int(cx - 0.35 * fw), int(cy - 0.35 * fh), int(cx + 0.35 * fw), int(cy + 0.35 * fh)
    assert (mask[y0:y1, x0:x1] == 255).mean() > 0.98          # the face is inside the person mask
    assert (mask[h - 60:, w // 2 - 40:w // 2 + 40] == 255).mean() > 0.9   # the uniform at the bottom centre
    assert (mask[:40, :40] == 0).mean() > 0.9 and (mask[:40, -40:] == 0).mean() > 0.9   # top corners: background
    assert 0.3 < r.coverage < 0.9


def test_segmentation_effects(svc):
    rgb = rgb_of("images/grace_hopper.jpg")
    h, w = rgb.shape[:2]
    st = {}
    r = pb.SegmentationResponse.FromString(call(svc, "StreamSelfieSegmentation",
                                                vf(rgb, 1, output="replace", background_color="#0000FF"), rgb.tobytes(), st))
    out = np.frombuffer(r.frame_data, np.uint8).reshape(r.frame_height, r.frame_width, 3)
    mask = np.frombuffer(r.mask, np.uint8).reshape(h, w)
    assert r.frame_format == "rgb" and r.output == "replace"
    assert np.abs(out[:30, :30].astype(int) - [0, 0, 255]).max() < 10          # background -> blue
    core = cv2.erode(mask, np.ones((15, 15), np.uint8)) == 255
    assert np.abs(out[core].astype(int) - rgb[core].astype(int)).mean() < 8    # person untouched
    r = pb.SegmentationResponse.FromString(call(svc, "StreamSelfieSegmentation", vf(rgb, 2, output="blur"), rgb.tobytes(), st))
    out = np.frombuffer(r.frame_data, np.uint8).reshape(h, w, 3)
    bg = cv2.dilate(mask, np.ones((15, 15), np.uint8)) == 0
    lap = lambda a: np.abs(cv2.Laplacian(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.CV_64F))  # noqa: E731
    assert lap(out)[bg].mean() < 0.5 * lap(rgb)[bg].mean()                    # background blurred
    # a background image, sent once, is kept for later frames
    bg_img = rgb_of("images/happyfish.jpg")
    ok, png = cv2.imencode(".png", cv2.cvtColor(bg_img, cv2.COLOR_RGB2BGR))
    req = vf(rgb, 3, output="replace", frame_format="png")
    req.background_image = png.tobytes()
    call(svc, "StreamSelfieSegmentation", req, rgb.tobytes(), st)
    r = pb.SegmentationResponse.FromString(call(svc, "StreamSelfieSegmentation", vf(rgb, 4, output="replace"), rgb.tobytes(), st))
    out = np.frombuffer(r.frame_data, np.uint8).reshape(h, w, 3)
    sized = cv2.resize(bg_img, (w, h), interpolation=cv2.INTER_AREA)
    assert np.abs(out[:30, :30].astype(int) - sized[:30, :30].astype(int)).mean() < 10
    r = pb.SegmentationResponse.FromString(call(svc, "StreamSelfieSegmentation", vf(rgb, 5, output="alpha"), rgb.tobytes(), st))
    assert r.format == "alpha" and len(np.unique(np.frombuffer(r.mask, np.uint8))) > 10
    with pytest.raises(WorkerError) as ei:
        call(svc, "StreamSelfieSegmentation", vf(rgb, 6, output="sparkles"), rgb.tobytes(), st)
    assert ei.value.code == "INVALID_ARGUMENT" and "frame 6" in ei.value.message


def test_template_matching_finds_the_cut(svc):
    rgb = rgb_of("images/messi5.jpg")
    h, w = rgb.shape[:2]
    x, y, tw, th = 230, 60, 48, 64
    tmpl = rgb[y:y + th, x:x + tw].copy()
    req = pb.TemplateMatchingRequest(frame_width=w, frame_height=h, template_data=tmpl.tobytes(), template_width=tw,
                                     template_height=th, threshold=0.9, frame_number=4, timestamp_ms=77)
    r = pb.TemplateMatchingResponse.FromString(call(svc, "StreamTemplateMatching", req, rgb.tobytes()))
    assert r.timestamp_ms == 77 and r.frame_number == 4
    assert len(r.matches) == 1
    m = r.matches[0]
    assert (m.x, m.y, m.width, m.height) == (x, y, tw, th) and m.confidence > 0.99
    # the same patch pasted twice more: three separate matches, no duplicates around each
    frame = rgb.copy()
    frame[250:250 + th, 40:40 + tw] = tmpl
    frame[200:200 + th, 420:420 + tw] = tmpl
    ok, png = cv2.imencode(".png", cv2.cvtColor(tmpl, cv2.COLOR_RGB2BGR))
    req = pb.TemplateMatchingRequest(frame_width=w, frame_height=h, template_data=png.tobytes(), threshold=0.8)
    r = pb.TemplateMatchingResponse.FromString(call(svc, "StreamTemplateMatching", req, frame.tobytes()))
    assert sorted((int(m.x), int(m.y)) for m in r.matches) == [(40, 250), (230, 60), (420, 200)]


def test_template_errors(svc):
    rgb = rgb_of("images/messi5.jpg")
    h, w = rgb.shape[:2]
    req = pb.TemplateMatchingRequest(frame_width=w, frame_height=h, template_data=b"\x01" * 10, template_width=5,
                                     template_height=5, frame_number=3)
    with pytest.raises(WorkerError) as ei:
        call(svc, "StreamTemplateMatching", req, rgb.tobytes())
    assert ei.value.code == "INVALID_ARGUMENT" and ei.value.message.startswith("frame 3 template")


@pytest.mark.slow
def test_object_tracking_stable_ids_over_video(svc):
    st = {}
    seen = []
    for n, rgb in enumerate(video_frames("video/carphone.mp4")):
        r = pb.ObjectTrackingResponse.FromString(call(svc, "StreamObjectTracking", vf(rgb, n), rgb.tobytes(), st))
        assert r.frame_number == n
        seen.append({(o.label, o.track_id) for o in r.objects})
        for o in r.objects:
            assert 1 <= len(o.trajectory) <= 30
    faces = [ids for s in seen for ids in s if ids[0] == "face"]
    assert len(faces) >= 115 and len({f[1] for f in faces}) == 1      # one face, one id, all clip long
    people = {ids[1] for s in seen for ids in s if ids[0] == "person"}
    assert len(people) == 1


def test_object_tracking_streams_are_isolated(svc):
    frames_ = gesture_frames()[:4]
    a, b = {}, {}
    for n, rgb in enumerate(frames_):
        ra = pb.ObjectTrackingResponse.FromString(call(svc, "StreamObjectTracking", vf(rgb, n), rgb.tobytes(), a, stream="a"))
        rb = pb.ObjectTrackingResponse.FromString(call(svc, "StreamObjectTracking", vf(rgb, n), rgb.tobytes(), b, stream="b"))
        assert [(o.label, o.track_id) for o in ra.objects] == [(o.label, o.track_id) for o in rb.objects]
        assert sorted(o.label for o in ra.objects) == ["face", "person"]
        assert len(ra.objects[0].trajectory) == n + 1
    assert a["tracker"] is not b["tracker"]


@pytest.mark.slow
def test_autoflip_smooth_reframing(svc):
    st = {}
    xs = []
    for n, rgb in enumerate(video_frames("video/carphone.mp4")):
        out = pb.VideoFrame.FromString(call(svc, "StreamAutoFlip", vf(rgb, n, aspect_ratio="9:16"), rgb.tobytes(), st))
        assert out.frame_number == n and out.format == "rgb"
        assert (out.width, out.height) == (int(out.metadata["crop_width"]), int(out.metadata["crop_height"]))
        assert out.height == 144 and abs(out.width / out.height - 9 / 16) < 0.05
        assert len(out.frame_data) == out.width * out.height * 3
        xs.append(int(out.metadata["crop_x"]))
        if n == 0:
            crop = np.frombuffer(out.frame_data, np.uint8).reshape(out.height, out.width, 3)
            assert np.array_equal(crop, rgb[:, xs[0]:xs[0] + out.width])
    steps = np.diff(xs)
    assert np.abs(steps).max() <= 0.06 * 176 + 1                       # bounded speed
    reversals = np.sum(np.sign(steps[steps != 0][1:]) != np.sign(steps[steps != 0][:-1]))
    assert reversals <= 4                                               # no jitter back and forth
    assert (steps == 0).mean() > 0.5                                    # mostly still (dead zone)


def test_autoflip_follows_the_face(svc):
    """A face moved from the left to the right of a wide frame drags the crop with it, smoothly."""
    face = rgb_of("images/grace_hopper.jpg")
    face = cv2.resize(face, (128, 150))
    st, xs = {}, []
    for n in range(30):
        frame = np.full((240, 640, 3), 90, np.uint8)
        x = 20 + n * 16
        frame[40:190, x:x + 128] = face
        out = pb.VideoFrame.FromString(call(svc, "StreamAutoFlip", vf(frame, n, aspect_ratio="1:1", output_format="png"),
                                            frame.tobytes(), st))
        assert out.format == "png" and (out.width, out.height) == (240, 240)
        xs.append(int(out.metadata["crop_x"]))
    assert xs[0] < 60 and xs[-1] > 300
    assert all(b >= a for a, b in zip(xs, xs[1:]))                      # monotonic: no jitter
    with pytest.raises(WorkerError) as ei:
        call(svc, "StreamAutoFlip", vf(frame, 31, aspect_ratio="wide"), frame.tobytes(), st)
    assert ei.value.code == "INVALID_ARGUMENT" and "frame 31" in ei.value.message


@pytest.mark.slow
def test_media_sequence_labels(svc):
    st = {}
    for i in range(21):
        data = read_bytes(f"video/gestures_part1/frame_{i:02d}.png")
        req = pb.MediaSequenceFrame(frame_number=i, timestamp_ms=100 * i, features={"motion": float(i % 3)})
        assert call(svc, "ProcessMediaSequence", req, data, st, end=False) == b""
    r = pb.MediaSequenceResponse.FromString(call(svc, "ProcessMediaSequence", pb.MediaSequenceFrame(), None, st, end=True))
    assert r.total_frames == 21
    by = {}
    for lab in r.labels:
        by.setdefault(lab.label, []).append(lab)
        assert 0 < lab.confidence <= 1 and lab.start_frame <= lab.end_frame
    assert [(l.start_frame, l.end_frame) for l in by["face"]] == [(0, 20)]
    assert [(l.start_frame, l.end_frame) for l in by["hand"]] == [(0, 20)]
    victory = by["Victory"]
    assert len(victory) == 1 and victory[0].start_frame <= 3 and victory[0].end_frame >= 10
    thumbs = by["Thumb_Up"]
    assert any(t.start_frame <= 15 and t.end_frame == 20 for t in thumbs)
    f = r.features
    assert f["frames"] == 21 and f["duration_ms"] == 2000 and f["face_fraction"] == 1.0
    assert 0.4 < f["Victory_fraction"] < 0.65 and abs(f["motion_mean"] - 1.0) < 1e-6


# ------------------------------------------------------------------ bad input / unsupported
def test_bad_frames_invalid_argument(svc):
    st = {}
    cases = [
        (pb.VideoFrame(format="rgb", width=640, height=480, frame_number=12), b"x" * 100,
         "frame 12 (rgb 640x480): expected 921600 bytes (640x480x3), got 100"),
        (pb.VideoFrame(format="jpeg", frame_number=13), b"\xff\xd8\xff" + b"\x00" * 34, "frame 13 (jpeg, 37 bytes)"),
        (pb.VideoFrame(format="rgb", width=0, height=480, frame_number=14), b"x" * 10, "frame 14"),
        (pb.VideoFrame(format="rgb", width=-3, height=480, frame_number=15), b"x" * 10, "positive"),
        (pb.VideoFrame(format="webp", width=4, height=4, frame_number=16), b"x" * 48, "unknown format 'webp'"),
        (pb.VideoFrame(format="rgb", width=4000, height=4000, frame_number=17), b"x" * (33 * 2**20), "size limit"),
    ]
    for req, data, text in cases:
        with pytest.raises(WorkerError) as ei:
            call(svc, "StreamFaceDetection", req, data, st)
        assert ei.value.code == "INVALID_ARGUMENT" and text in ei.value.message, ei.value.message
    # the stream's state still works afterwards
    rgb = rgb_of("images/astronaut.png")
    r = pb.FaceDetectionResponse.FromString(call(svc, "StreamFaceDetection", vf(rgb, 18), rgb.tobytes(), st))
    assert len(r.faces) == 1
    with pytest.raises(WorkerError) as ei:
        call(svc, "DetectFaces", pb.ImageRequest(format="raw", width=10, height=10), b"x" * 299)
    assert ei.value.message.startswith("image (rgb 10x10): expected 300 bytes")


@pytest.mark.parametrize("method,word", [("StreamHairSegmentation", "hair_segmentation"),
                                         ("StreamObjectDetection", "efficientdet"),
                                         ("StreamObjectDetection3D", "Objectron")])
def test_unimplemented_names_the_model(svc, method, word):
    with pytest.raises(WorkerError) as ei:
        call(svc, method, pb.VideoFrame(format="rgb", width=2, height=2), b"x" * 12, {})
    assert ei.value.code == "UNIMPLEMENTED" and word in ei.value.message


def test_stream_state_closes_instances(svc):
    st = {}
    rgb = rgb_of("images/astronaut.png")
    call(svc, "StreamHandTracking", vf(rgb), rgb.tobytes(), st)
    inst = st["mp:hands"]
    for v in st.values():
        if hasattr(v, "close"):
            v.close()
    assert inst._graph is None    # MediaPipe graph released
