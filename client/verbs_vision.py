"""`python run.py call vision TASK INPUT -o OUT.png`: run a MediaPipe capability on an image or a video
file through the service and write an annotated PNG (boxes, landmarks, gesture names, mask, tracks).

Tasks: faces, mesh, iris, hands, pose, holistic, segment, track, autoflip, template, sequence.
Images are sent as their own jpeg/png bytes for the unary tasks (faces, hands, pose) and as raw rgb
frames for the streams; videos are decoded with OpenCV and streamed frame by frame as they are read
(--max-frames). Streams run in running mode VIDEO (every frame answered, in order; docs/vision.md): the
summary line counts the frames sent and answered, and a frame without an answer is an error (exit 1,
nothing written). The PNG shows the last frame with its results (track: with every track's trajectory;
segment --effect cutout: the frame with the person matte as its alpha channel). Every face and every
person is drawn (mesh, iris, pose, holistic: each labelled with its track id, or its place left to right for
an image's poses) and the summary counts them, then gives each one's figures.
"""
from __future__ import annotations

import os
import sys
import time

HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10), (10, 11), (11, 12),
              (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (17, 18), (18, 19), (19, 20), (0, 17)]
POSE_EDGES = [(11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24), (23, 25), (25, 27),
              (24, 26), (26, 28), (27, 31), (28, 32), (0, 2), (0, 5), (9, 10)]
TASKS = ("faces", "mesh", "iris", "hands", "pose", "holistic", "segment", "track", "autoflip", "template", "sequence")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def register(sub) -> None:
    p = sub.add_parser("vision", help="MediaPipe on an image or video; writes an annotated PNG")
    p.add_argument("task", choices=TASKS)
    p.add_argument("input", help="image (jpg/png) or video file")
    p.add_argument("-o", "--output", default="", help="annotated PNG to write (default: <input>.<task>.png)")
    p.add_argument("--max-frames", type=int, default=300, help="frames of a video to send (default 300)")
    p.add_argument("--aspect", default="9:16", help="autoflip: target aspect ratio")
    p.add_argument("--effect", default="mask", choices=("mask", "alpha", "blur", "replace", "cutout"),
                   help="segment: output mode")
    p.add_argument("--template", default="", help="template: image file of the template to find")
    p.add_argument("--threshold", type=float, default=0.8, help="template: match threshold")
    p.add_argument("--meta", action="append", default=[], help="extra frame metadata KEY=VALUE (repeatable)")
    p.set_defaults(func=run)


class FrameSource:
    """The input's frames as RGB arrays, read lazily (an image is one frame; a video is decoded with OpenCV
    frame by frame, at most `limit`), so a long video is never held in memory. `numbered()` yields
    (frame_number, frame) and counts in `sent` the frames handed to gRPC; `last` is the latest frame read."""

    def __init__(self, path: str, limit: int):
        self.path, self.limit = path, max(1, limit)
        self.is_image = path.lower().endswith(IMAGE_EXT)
        self.sent = 0
        self.truncated = False   # the video has more frames than --max-frames
        self._it = self._read()
        self.last = next(self._it, None)   # read the first frame now: a bad input fails before any call
        self._first_pending = self.last is not None

    def _read(self):
        import cv2
        if self.is_image:
            img = cv2.imread(self.path, cv2.IMREAD_COLOR)
            if img is None:
                raise SystemExit(f"cannot read image {self.path}")
            yield cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            return
        if not os.path.isfile(self.path):
            raise SystemExit(f"no such file: {self.path}")
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise SystemExit(f"cannot open video {self.path}")
        try:
            n = 0
            while n < self.limit:
                ok, fr = cap.read()
                if not ok:
                    return
                n += 1
                yield cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)
            self.truncated = cap.grab()
        finally:
            cap.release()

    def numbered(self):
        if self._first_pending:
            self._first_pending = False
            self.sent += 1
            yield 0, self.last
        for f in self._it:
            self.last = f
            self.sent += 1
            yield self.sent - 1, f


class Answers:
    """Reads a response stream, one answer per frame: counts them, notes their frame numbers, keeps the
    last one (and hands each to `each`, if given), then says which frames sent got no answer."""

    def __init__(self, responses, each=None):
        self.count, self.numbers, self.last = 0, set(), None
        for r in responses:
            self.count += 1
            self.numbers.add(r.frame_number)
            self.last = r
            if each is not None:
                each(r)
        self.dropped = ""
        try:  # the service's own count of dropped frames (live_stream only)
            self.dropped = dict(responses.trailing_metadata() or ()).get("dropped-frames", "")
        except Exception:
            pass

    def problem(self, sent: int) -> str:
        """'' when every frame sent was answered, else what is missing."""
        missing = [n for n in range(sent) if n not in self.numbers]
        if self.count == sent and not missing:
            return ""
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        msg = f"{sent} frames sent, {self.count} answered"
        if missing:
            msg += f"; no answer for frame(s) {shown}"
        if self.dropped and self.dropped != "0":
            msg += f" (the service dropped {self.dropped}: running mode live_stream)"
        return msg


def _px(lm, w, h):
    return int(round(lm.x * w)), int(round(lm.y * h))


def _draw_landmarks(img, lms, edges, color, radius=2):
    import cv2
    h, w = img.shape[:2]
    pts = [_px(p, w, h) for p in lms]
    for a, b in edges:
        if a < len(pts) and b < len(pts):
            cv2.line(img, pts[a], pts[b], color, 1, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, p, radius, color, -1, cv2.LINE_AA)


def _label(img, text, org, color=(255, 255, 255)):
    import cv2
    x, y = org
    cv2.putText(img, text, (x, max(12, y)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (x, max(12, y)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)


def _box(img, x, y, bw, bh, color, text=""):
    import cv2
    h, w = img.shape[:2]
    p0, p1 = (int(x * w), int(y * h)), (int((x + bw) * w), int((y + bh) * h))
    cv2.rectangle(img, p0, p1, color, 2)
    if text:
        _label(img, text, (p0[0], p0[1] - 4), color)


def draw_faces(img, resp):
    import cv2
    h, w = img.shape[:2]
    for f in resp.faces:
        _box(img, f.x, f.y, f.width, f.height, (0, 255, 0), f"face {f.confidence:.2f}")
        for k in f.keypoints:
            cv2.circle(img, _px(k, w, h), 3, (255, 0, 0), -1)


def draw_hand(img, hd):
    _draw_landmarks(img, hd.landmarks, HAND_EDGES, (255, 200, 0), 3)
    h, w = img.shape[:2]
    x, y = _px(hd.landmarks[0], w, h)
    g = f" {hd.gestures[0].name} {hd.gestures[0].confidence:.2f}" if hd.gestures else ""
    _label(img, f"{hd.handedness}{g}", (x, y + 16), (255, 255, 0))


def draw_pose(img, p):
    _draw_landmarks(img, p.landmarks, POSE_EDGES, (0, 255, 255), 3)
    h, w = img.shape[:2]
    idx = {"left_elbow": 13, "right_elbow": 14, "left_knee": 25, "right_knee": 26, "left_shoulder": 11,
           "right_shoulder": 12, "left_hip": 23, "right_hip": 24}
    for a in p.joint_angles:
        if a.name in idx:
            x, y = _px(p.landmarks[idx[a.name]], w, h)
            _label(img, f"{a.degrees:.0f}", (x + 4, y), (0, 255, 255))


def draw_mesh(img, face):
    import cv2
    h, w = img.shape[:2]
    pts = [_px(p, w, h) for p in face.landmarks]
    c = list(face.contours)
    for a, b in zip(c[0::2], c[1::2]):
        cv2.line(img, pts[a], pts[b], (0, 255, 0), 1, cv2.LINE_AA)
    for p in pts[:468]:
        cv2.circle(img, p, 1, (200, 200, 200), -1)
    for p in pts[468:]:
        cv2.circle(img, p, 2, (0, 0, 255), -1)


def _who(i: int, track_id: int) -> str:
    """A target's name in the summary and on the image: its stream id, else its place (1-based)."""
    return f"#{track_id}" if track_id else f"{i + 1}"


def _target_label(img, lms, text, color):
    """``text`` just above the topmost of the landmarks (no-op without landmarks)."""
    h, w = img.shape[:2]
    pts = [_px(p, w, h) for p in lms]
    if pts:
        x = min(p[0] for p in pts)
        y = min(p[1] for p in pts)
        _label(img, text, (max(0, x), y - 6), color)


def iris_faces(r) -> list:
    """Every face of an IrisTrackingResponse as (track_id, eyes, combined_gaze, head_pose): the first face in
    the response's own fields (when it has one), then ``more_faces``."""
    out = []
    if r.eyes or r.track_id:
        out.append((r.track_id, list(r.eyes), r.combined_gaze, r.head_pose))
    out += [(f.track_id, list(f.eyes), f.combined_gaze, f.head_pose) for f in r.more_faces]
    return out


def holistic_people(r) -> list:
    """Every person of a HolisticTrackingResponse as (track_id, pose, face, hands): ``people``, or, from a
    service that does not fill it, the one person of fields 1-3 (when there is one)."""
    if r.people:
        return [(p.track_id, p.pose, p.face, list(p.hands)) for p in r.people]
    if r.pose.landmarks or r.face.landmarks or r.hands:
        return [(r.pose.track_id, r.pose, r.face, list(r.hands))]
    return []


def _decoded(data: bytes, fmt: str, w: int, h: int, keep_alpha: bool = False):
    """An output frame as RGB (RGBA with keep_alpha, when it has an alpha channel): raw rgb/bgr/rgba, or
    png/jpeg (what the service sends when raw bytes would not fit the client's message limit,
    --max-response-mb)."""
    import cv2
    import numpy as np
    if fmt in ("png", "jpeg"):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED if keep_alpha else cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"the service sent a {fmt} frame that could not be decoded ({len(data)} bytes)")
        if img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    arr = np.frombuffer(data, np.uint8).reshape(h, w, -1)
    if fmt in ("bgr", "bgra"):
        arr = arr[..., [2, 1, 0, 3][:arr.shape[2]]]
    if keep_alpha and arr.shape[2] == 4:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr[..., :3])


def write_png(path: str, rgb_or_rgba) -> None:
    """RGB or RGBA array -> PNG (the alpha channel kept)."""
    import cv2
    code = cv2.COLOR_RGBA2BGRA if rgb_or_rgba.ndim == 3 and rgb_or_rgba.shape[2] == 4 else cv2.COLOR_RGB2BGR
    if not cv2.imwrite(path, cv2.cvtColor(rgb_or_rgba, code)):
        raise SystemExit(f"cannot write {path}")


def run(args, channel) -> int:
    import cv2
    import numpy as np
    from protos import ml_inference_pb2 as pb
    from protos import ml_inference_pb2_grpc as pbg

    stub = pbg.MediapipeServiceStub(channel)
    meta = dict(kv.split("=", 1) for kv in args.meta if "=" in kv)
    # Every frame is answered (running mode VIDEO, the service's default, asked for explicitly) unless the
    # caller's --meta chooses another mode: the summary counts the answers and a missing one is an error.
    mode_md = () if {"running_mode", "running-mode"} & set(meta) else (("running-mode", "video"),)
    out_path = args.output or f"{os.path.splitext(args.input)[0]}.{args.task}.png"
    src = FrameSource(args.input, args.max_frames)
    if src.last is None:
        print(f"no frames in {args.input}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    summary = ""
    answers = None            # Answers of a stream, checked against src.sent below
    answered_total = None     # a client-streaming call's own count (sequence)
    r = None

    def video(extra=None):
        md = {**meta, **(extra or {})}
        for n, f in src.numbered():
            fh, fw = f.shape[:2]
            yield pb.VideoFrame(frame_data=f.tobytes(), format="rgb", width=fw, height=fh, frame_number=n,
                                timestamp_ms=int(n * 1000 / 30), metadata=md)

    def stream(method, requests, each=None):
        return Answers(method(requests, timeout=args.timeout, metadata=mode_md), each)

    def image_request():
        if src.is_image:
            with open(args.input, "rb") as fh:
                data = fh.read()
            fmt = "png" if data[:4] == b"\x89PNG" else "jpeg" if data[:3] == b"\xff\xd8\xff" else ""
            if fmt:
                return pb.ImageRequest(image_data=data, format=fmt, metadata=meta)
        h, w = src.last.shape[:2]
        return pb.ImageRequest(image_data=src.last.tobytes(), format="raw", width=w, height=h, metadata=meta)

    def unary(method):
        nonlocal answered_total
        src.sent, answered_total = 1, 1
        return method(image_request(), timeout=args.timeout)

    task = args.task
    if task in ("faces", "hands", "pose"):
        if src.is_image:
            r = unary(getattr(stub, {"faces": "DetectFaces", "hands": "DetectHands", "pose": "DetectPose"}[task]))
        else:
            answers = stream(getattr(stub, {"faces": "StreamFaceDetection", "hands": "StreamHandTracking",
                                            "pose": "StreamPoseTracking"}[task]), video())
            r = answers.last
    elif task in ("mesh", "iris", "holistic"):
        method = {"mesh": "StreamFaceMesh", "iris": "StreamIrisTracking", "holistic": "StreamHolisticTracking"}[task]
        answers = stream(getattr(stub, method), video())
        r = answers.last
    elif task == "segment":
        answers = stream(stub.StreamSelfieSegmentation,
                         video({"output": args.effect, "frame_format": "rgba" if args.effect == "cutout" else "rgb"}))
        r = answers.last
    elif task == "track":
        ids = set()
        answers = stream(stub.StreamObjectTracking, video(),
                         lambda rr: ids.update((o.label, o.track_id) for o in rr.objects))
        r = answers.last
    elif task == "autoflip":
        answers = stream(stub.StreamAutoFlip, video({"aspect_ratio": args.aspect}))
        r = answers.last
    elif task == "template":
        if not args.template:
            print("template: --template FILE is required", file=sys.stderr)
            return 1
        with open(args.template, "rb") as fh:
            tdata = fh.read()
        reqs = (pb.TemplateMatchingRequest(frame_data=f.tobytes(), frame_width=f.shape[1], frame_height=f.shape[0],
                                           template_data=tdata, threshold=args.threshold, frame_number=n)
                for n, f in src.numbered())
        answers = stream(stub.StreamTemplateMatching, reqs)
        r = answers.last
    elif task == "sequence":
        def seq():
            for n, f in src.numbered():
                ok, buf = cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
                yield pb.MediaSequenceFrame(frame_data=buf.tobytes(), frame_number=n, timestamp_ms=int(n * 1000 / 30))
        r = stub.ProcessMediaSequence(seq(), timeout=args.timeout)
        answered_total = r.total_frames
    dt = time.perf_counter() - t0

    sent = src.sent
    if answers is not None:
        problem = answers.problem(sent)
        answered_total = answers.count
    else:
        problem = "" if answered_total == sent else f"{sent} frames sent, the service counted {answered_total}"
    if problem or r is None:
        print(f"error: {task}: {problem or 'no answer'}; nothing written", file=sys.stderr)
        return 1

    last = src.last.copy()
    h, w = last.shape[:2]
    if task == "faces":
        draw_faces(last, r)
        summary = f"{len(r.faces)} face(s)"
    elif task == "hands":
        for hd in r.hands:
            draw_hand(last, hd)
        summary = ", ".join(f"{hd.handedness}: {hd.gestures[0].name if hd.gestures else 'no gesture'}"
                            for hd in r.hands) or "no hands"
    elif task == "pose":
        for i, p in enumerate(r.poses):
            draw_pose(last, p)
            _target_label(last, p.landmarks, _who(i, p.track_id), (0, 255, 255))
        summary = f"{len(r.poses)} pose(s)" + "".join(
            f"; {_who(i, p.track_id)}: "
            + (", ".join(f"{a.name} {a.degrees:.0f}" for a in p.joint_angles) or "no joint angles")
            for i, p in enumerate(r.poses))
    elif task == "mesh":
        for i, f in enumerate(r.faces):
            draw_mesh(last, f)
            _target_label(last, f.landmarks[:468], _who(i, f.track_id), (0, 255, 0))
        summary = f"{len(r.faces)} face mesh(es), {[len(f.landmarks) for f in r.faces]} landmarks"
        if any(f.track_id for f in r.faces):
            summary += f", ids {[f.track_id for f in r.faces]}"
    elif task == "iris":
        faces = iris_faces(r)
        for i, (tid, eyes, gaze, head) in enumerate(faces):
            for e in eyes:
                _draw_landmarks(last, e.eye_landmarks, [], (0, 255, 0), 1)
                _draw_landmarks(last, e.iris_landmarks, [], (0, 0, 255), 2)
                cx, cy = _px(e.iris_landmarks[0], w, h)
                L = 0.25 * w
                cv2.arrowedLine(last, (cx, cy), (int(cx + L * e.gaze.x), int(cy + L * e.gaze.y)), (255, 0, 255), 2)
            _target_label(last, [lm for e in eyes for lm in e.eye_landmarks], _who(i, tid), (255, 0, 255))
            _label(last, f"{_who(i, tid)}: gaze yaw {gaze.yaw:.0f} pitch {gaze.pitch:.0f}  "
                         f"head yaw {head.yaw:.0f} pitch {head.pitch:.0f} roll {head.roll:.0f}",
                   (5, 15 + 16 * i), (255, 0, 255))
        summary = f"{len(faces)} face(s), {sum(len(f[1]) for f in faces)} eye(s)" + "".join(
            f"; {_who(i, tid)}: gaze yaw {gaze.yaw:.1f} pitch {gaze.pitch:.1f}"
            for i, (tid, _, gaze, _) in enumerate(faces))
    elif task == "holistic":
        people = holistic_people(r)
        for i, (tid, pose, face, hands_) in enumerate(people):
            if face.landmarks:
                draw_mesh(last, face)
            if pose.landmarks:
                draw_pose(last, pose)
                _target_label(last, pose.landmarks, _who(i, tid), (0, 255, 255))
            for hd in hands_:
                draw_hand(last, hd)
        summary = f"{len(people)} person(s)" + "".join(
            f"; {_who(i, tid)}: face {len(face.landmarks)}, pose {len(pose.landmarks)}, hands {len(hands_)}"
            for i, (tid, pose, face, hands_) in enumerate(people))
    elif task == "segment":
        mask = np.frombuffer(r.mask, np.uint8).reshape(r.height, r.width)
        if mask.shape != (h, w):   # a mask scaled down to fit the client's message limit
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        if args.effect == "cutout":
            # the frame with the matte as its alpha channel: as sent (rgba, or png when it had to shrink),
            # else the input frame with the mask as alpha
            out = _decoded(r.frame_data, r.frame_format, r.frame_width, r.frame_height, keep_alpha=True) \
                if r.frame_data else last
            if out.shape[2] != 4:
                if out.shape[:2] != (h, w):
                    out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
                out = np.dstack([out, mask])
            last = out
        elif r.frame_data:
            last = _decoded(r.frame_data, r.frame_format, r.frame_width, r.frame_height)
        else:
            tint = last.copy()
            tint[mask > 127] = (0.5 * tint[mask > 127] + [0, 110, 0]).astype(np.uint8)
            last = tint
        summary = f"mask {r.format}, person covers {100 * r.coverage:.1f}% of the frame"
    elif task == "track":
        for o in r.objects:
            color = (0, 255, 0) if o.label == "face" else (255, 128, 0)
            pts = [(int((b.x + b.width / 2) * w), int((b.y + b.height / 2) * h)) for b in o.trajectory]
            for a, b in zip(pts, pts[1:]):
                cv2.line(last, a, b, color, 2)
            _box(last, o.bbox.x, o.bbox.y, o.bbox.width, o.bbox.height, color, f"{o.label} #{o.track_id}")
        summary = f"tracks: {sorted(ids)}"
    elif task == "autoflip":
        crop = _decoded(r.frame_data, r.format, r.width, r.height)
        x, y = int(r.metadata["crop_x"]), int(r.metadata["crop_y"])
        cw, ch = int(r.metadata["crop_width"]), int(r.metadata["crop_height"])
        cv2.rectangle(last, (x, y), (x + cw - 1, y + ch - 1), (255, 0, 255), 2)
        canvas = np.zeros((max(h, crop.shape[0]), w + 10 + crop.shape[1], 3), np.uint8)
        canvas[:h, :w] = last
        canvas[:crop.shape[0], w + 10:] = crop
        last = canvas
        summary = f"reframed to {r.width}x{r.height}; last crop x={x} y={y}"
    elif task == "template":
        for m in r.matches:
            cv2.rectangle(last, (int(m.x), int(m.y)), (int(m.x + m.width), int(m.y + m.height)), (255, 0, 0), 2)
            _label(last, f"{m.confidence:.2f}", (int(m.x), int(m.y) - 4), (255, 0, 0))
        summary = f"{len(r.matches)} match(es)"
    elif task == "sequence":
        for i, lab in enumerate(r.labels[:20]):
            _label(last, f"{lab.label} {lab.start_frame}-{lab.end_frame} ({lab.confidence:.2f})", (5, 15 + 16 * i))
        summary = "; ".join(f"{lab.label} {lab.start_frame}-{lab.end_frame}" for lab in r.labels) or "no labels"
    write_png(out_path, last)
    counted = f"{sent} frame{'s' if sent != 1 else ''} sent, {answered_total} answered"
    print(f"{task}: {counted}; {summary}")
    cut = f" (the first {args.max_frames}: --max-frames)" if src.truncated else ""
    print(f"wrote {out_path} ({w}x{h}{', with alpha' if last.ndim == 3 and last.shape[2] == 4 else ''}; "
          f"{sent} frame(s){cut}, {dt:.2f}s)")
    return 0
