"""`run.py call` verbs against the real service, the CLI run as a subprocess: video verbs answer every
frame and say so, unload prints the measured figure (never '-0'), segment --effect cutout keeps the alpha
channel, infer takes an image, pose and holistic report and draw both people of a two-person photo; plus
the CLI's own checks (a frame without an answer is an error) with a stub that drops frames, iris and
holistic drawing every face / person a stub answers, and the '-0' clean-up of an older service's unload
message."""
from __future__ import annotations

import os
import re
import subprocess
import types

import cv2
import numpy as np
import pytest

from tests.service import PYTHON, ROOT, start_service

CARPHONE = "/work/shared/assets/video/carphone.mp4"
if not os.path.exists(CARPHONE):
    CARPHONE = os.path.join(ROOT, "tests", "assets", "video", "carphone.mp4")
GRACE = os.path.join(ROOT, "tests", "assets", "grace_hopper.jpg")
FISH = os.path.join(ROOT, "tests", "assets", "happyfish.jpg")


def video_frames(path: str) -> int:
    cap = cv2.VideoCapture(path)
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def svc():
    with start_service(["--pools", "vision,hf,litert"]) as s:
        yield s


def cli(svc, *argv, timeout=180):
    env = dict(os.environ)
    env.pop("PML_ADDRESS", None)
    env.pop("PYTHONML_TOKEN", None)
    return subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "call", *argv, "--address", svc.address],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ---- through the real service -------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("task", ["autoflip", "faces"])
def test_video_verb_answers_every_frame(svc, tmp_path, task):
    assert video_frames(CARPHONE) == 120
    out = tmp_path / f"{task}.png"
    r = cli(svc, "vision", task, CARPHONE, "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{task}: 120 frames sent, 120 answered" in r.stdout, r.stdout + r.stderr
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.shape[0] == 144, r.stdout


@pytest.mark.integration
def test_video_verb_max_frames_counts_what_was_sent(svc, tmp_path):
    r = cli(svc, "vision", "mesh", CARPHONE, "--max-frames", "30", "-o", str(tmp_path / "m.png"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mesh: 30 frames sent, 30 answered; 1 face mesh(es)" in r.stdout, r.stdout
    assert "--max-frames" in r.stdout  # says the video was cut


@pytest.mark.integration
@pytest.mark.parametrize("task, count", [("pose", "2 pose(s)"), ("holistic", "2 person(s)")])
def test_every_person_of_a_two_person_photo(svc, tmp_path, task, count):
    """tests/test_vision_multiperson.py's side-by-side photo (messi5 + basketball1's left man): the summary
    counts both people and gives each one's figures; both are drawn."""
    from tests.test_vision_multiperson import side_by_side
    rgb, regions = side_by_side()
    photo = tmp_path / "two_people.png"
    cv2.imwrite(str(photo), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / f"{task}.png"
    r = cli(svc, "vision", task, str(photo), "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{task}: 1 frame sent, 1 answered; {count}; " in r.stdout, r.stdout
    first, second = ("1", "2") if task == "pose" else ("#1", "#2")   # DetectPose: places; streams: track ids
    assert f"; {first}: " in r.stdout and f"; {second}: " in r.stdout and "; 3: " not in r.stdout, r.stdout
    if task == "pose":   # each person's joint angles
        assert r.stdout.count("left_elbow") == 2, r.stdout
    else:
        assert r.stdout.count("pose 33") == 2, r.stdout
    drawn = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    changed = np.any(drawn != rgb, axis=2)
    for body, _ in regions.values():     # skeleton lines on both people
        x0, y0, x1, y1 = body
        assert changed[y0:y1, x0:x1].mean() > 0.005, (task, body)


@pytest.mark.integration
def test_segment_cutout_png_keeps_alpha(svc, tmp_path):
    out = tmp_path / "cutout.png"
    r = cli(svc, "vision", "segment", GRACE, "--effect", "cutout", "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 frame sent, 1 answered" in r.stdout and "with alpha" in r.stdout, r.stdout
    png = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    src = cv2.imread(GRACE, cv2.IMREAD_COLOR)
    assert png.shape == src.shape[:2] + (4,)
    alpha = png[..., 3]
    h, w = alpha.shape
    assert alpha[h // 3, w // 2] > 200, "the face is inside the person matte"
    assert alpha[5, 5] < 50 and alpha[5, w - 6] < 50, "the top corners are background"
    assert 0.2 < (alpha > 127).mean() < 0.9
    np.testing.assert_array_equal(png[..., :3][alpha > 0], src[alpha > 0])  # colours as sent, not premultiplied


@pytest.mark.integration
def test_unload_prints_measured_non_negative_figure(svc):
    r = cli(svc, "load", "all-MiniLM-L6-v2")
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stdout + r.stderr
    r = cli(svc, "unload", "all-MiniLM-L6-v2")
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"freed (\S+) MB RAM, (\S+) MB VRAM", r.stdout)
    assert m, r.stdout
    assert re.fullmatch(r"\d+", m.group(1)) and re.fullmatch(r"\d+", m.group(2)), r.stdout
    assert "-0" not in r.stdout
    r = cli(svc, "unload", "all-MiniLM-L6-v2")
    assert r.returncode == 2 and "NOT_FOUND" in r.stderr, r.stdout + r.stderr


@pytest.mark.integration
def test_infer_takes_an_image(svc):
    def best_logit(path):
        r = cli(svc, "infer", "face_detection_short_range", path)
        assert r.returncode == 0, r.stdout + r.stderr
        m = re.search(r"classificators\s+FP32 \[1,896,1\]\s+min \S+ max (\S+)", r.stdout)
        assert m, r.stdout
        return float(m.group(1))
    assert best_logit(GRACE) > 0 > best_logit(FISH)


@pytest.mark.integration
def test_missing_input_file_is_one_line_error(svc, tmp_path):
    r = cli(svc, "transcribe", str(tmp_path / "nope.wav"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "nope.wav" in r.stderr


# ---- the CLI's own checks, with a stub service -----------------------------------------------------------

class _DroppingStub:
    """StreamAutoFlip / StreamFaceDetection that read every frame and answer only the even ones."""

    def __init__(self, channel):
        from protos import ml_inference_pb2 as pb
        self.pb = pb

    def _answers(self, requests, make):
        frames = list(requests)
        out = [make(f) for f in frames if f.frame_number % 2 == 0]
        return _Responses(out, dropped=len(frames) - len(out))

    def StreamAutoFlip(self, requests, timeout=None, metadata=None):
        return self._answers(requests, lambda f: self.pb.VideoFrame(
            frame_data=f.frame_data, format="rgb", width=f.width, height=f.height, frame_number=f.frame_number,
            metadata={"crop_x": "0", "crop_y": "0", "crop_width": str(f.width), "crop_height": str(f.height)}))

    def StreamFaceDetection(self, requests, timeout=None, metadata=None):
        return self._answers(requests, lambda f: self.pb.FaceDetectionResponse(frame_number=f.frame_number))


class _Responses(list):
    def __init__(self, items, dropped):
        super().__init__(items)
        self.dropped = dropped

    def trailing_metadata(self):
        return (("dropped-frames", str(self.dropped)),)


def _vision_args(task, path, out, **kw):
    base = dict(task=task, input=path, output=str(out), max_frames=300, aspect="9:16", effect="mask", template="",
                threshold=0.8, meta=[], timeout=30.0)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize("task", ["autoflip", "faces"])
def test_missing_answers_fail_loudly(monkeypatch, tmp_path, capsys, task):
    from client import verbs_vision
    monkeypatch.setattr("protos.ml_inference_pb2_grpc.MediapipeServiceStub", _DroppingStub)
    out = tmp_path / "x.png"
    rc = verbs_vision.run(_vision_args(task, CARPHONE, out, max_frames=10), channel=None)
    cap = capsys.readouterr()
    assert rc == 1
    assert f"error: {task}: 10 frames sent, 5 answered; no answer for frame(s) 1, 3, 5, 7, 9" in cap.err, cap.err
    assert "the service dropped 5" in cap.err
    assert not out.exists() and "wrote" not in cap.out


def _landmarks(pb, cx, cy, n, spread=0.05):
    return [pb.Landmark(x=cx + spread * np.cos(k), y=cy + spread * np.sin(k), visibility=1.0) for k in range(n)]


class _TwoTargetsStub:
    """StreamIrisTracking / StreamHolisticTracking answering two faces / two people, at x = 0.25 and 0.75."""

    def __init__(self, channel):
        from protos import ml_inference_pb2 as pb
        self.pb = pb

    def _eyes(self, cx):
        pb = self.pb
        return [pb.IrisTracking(eye=e, iris_landmarks=_landmarks(pb, cx + dx, 0.4, 5, 0.01),
                                eye_landmarks=_landmarks(pb, cx + dx, 0.4, 16, 0.03)) for e, dx in (("right", -0.05),
                                                                                                    ("left", 0.05))]

    def StreamIrisTracking(self, requests, timeout=None, metadata=None):
        pb = self.pb
        out = []
        for f in requests:
            r = pb.IrisTrackingResponse(frame_number=f.frame_number, track_id=1, eyes=self._eyes(0.25),
                                        combined_gaze=pb.GazeDirection(yaw=10), head_pose=pb.Pose3D(yaw=5))
            r.more_faces.add(track_id=3, eyes=self._eyes(0.75), combined_gaze=pb.GazeDirection(yaw=-20))
            out.append(r)
        return _Responses(out, dropped=0)

    def StreamHolisticTracking(self, requests, timeout=None, metadata=None):
        pb = self.pb
        out = []
        for f in requests:
            r = pb.HolisticTrackingResponse(frame_number=f.frame_number)
            for tid, cx in ((1, 0.25), (2, 0.75)):
                pose = pb.PoseDetection(landmarks=_landmarks(pb, cx, 0.5, 33, 0.15), track_id=tid)
                face = pb.FaceMesh(landmarks=_landmarks(pb, cx, 0.25, 478, 0.05), track_id=tid)
                hand = pb.HandDetection(landmarks=_landmarks(pb, cx + 0.1, 0.7, 21, 0.03), handedness="Left")
                r.people.add(track_id=tid, pose=pose, face=face, hands=[hand] if tid == 1 else [])
            r.pose.CopyFrom(r.people[0].pose)
            r.face.CopyFrom(r.people[0].face)
            r.hands.extend(r.people[0].hands)
            out.append(r)
        return _Responses(out, dropped=0)


@pytest.mark.parametrize("task, summary", [
    ("iris", "iris: 1 frame sent, 1 answered; 2 face(s), 4 eye(s); #1: gaze yaw 10.0 pitch 0.0; "
             "#3: gaze yaw -20.0 pitch 0.0"),
    ("holistic", "holistic: 1 frame sent, 1 answered; 2 person(s); #1: face 478, pose 33, hands 1; "
                 "#2: face 478, pose 33, hands 0")])
def test_iris_and_holistic_draw_every_face_and_person(monkeypatch, tmp_path, capsys, task, summary):
    from client import verbs_vision
    monkeypatch.setattr("protos.ml_inference_pb2_grpc.MediapipeServiceStub", _TwoTargetsStub)
    photo = tmp_path / "grey.png"
    cv2.imwrite(str(photo), np.full((200, 400, 3), 128, np.uint8))
    out = tmp_path / "x.png"
    assert verbs_vision.run(_vision_args(task, str(photo), out), channel=None) == 0
    assert summary in capsys.readouterr().out
    changed = np.any(cv2.imread(str(out)) != 128, axis=2)
    assert changed[:, 60:140].any() and changed[:, 260:340].any(), "both targets drawn"


def test_unload_cleans_negative_zero(monkeypatch, capsys):
    from client import verbs_hf
    from protos import ml_inference_pb2 as pb

    class Stub:
        def __init__(self, channel):
            pass

        def UnloadModel(self, req, timeout=None):
            return pb.StatusResponse(success=True, message=f"unloaded '{req.model_id}': freed -0 MB RAM, -0 MB VRAM")

    monkeypatch.setattr(verbs_hf.MLG, "ModelManagementServiceStub", Stub)
    assert verbs_hf.cmd_unload(types.SimpleNamespace(model_id="m", timeout=5.0), channel=None) == 0
    assert capsys.readouterr().out == "ok: unloaded 'm': freed 0 MB RAM, 0 MB VRAM\n"
