"""The `ml.MediapipeService` handlers: parse the request, decode the frame, run, serialise the response.

`VisionService(options).handlers()` maps each method path (common/methods.py) to `fn(ctx) -> bytes`. It
does not depend on the worker base, so the handlers are unit-tested with `workers.context.make_test_context`.
Frames come from `ctx.side.field(req, "frame_data")` (common/payload.py): the shared-memory frame, or the
message's own bytes field when the facade left them there.

Every VideoFrame stream is one skeleton (`_video_stream`): the stream's state, the frame parsed and decoded
once, an answer stamped with the frame's timestamp and number, filled by the method's own step
`step(ctx, state, req, rgb, what, answer)`.

Compressed frames (h264, hevc, vp8, vp9) go through the stream's own decoder (frames.decode_in_stream,
kept in the stream state); a frame that holds no picture (parameter sets only) gets an empty answer
that echoes its timestamp and number.

Bad input raises WorkerError("INVALID_ARGUMENT", "<frame label>: <problem>"). In a bidirectional
stream a gRPC status ends the call, so a bad frame ends that stream (and only that stream) with
the message naming the frame; the worker and other streams are unaffected.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Optional

import numpy as np

from common import methods as M
from protos import ml_inference_pb2 as pb
from workers.context import RequestContext, WorkerError
from workers.vision import (autoflip, face_landmarks, face_search, faces, fit, frames, hands, holistic, iris_gaze, mesh,
                            multipose, person_detector, pose, pose_landmarker, segmentation, sequence, solutions,
                            template, tracking)

UNIMPLEMENTED = {
    M.STREAM_HAIR_SEGMENTATION:
        "hair segmentation needs MediaPipe's hair_segmentation.tflite model, which the mediapipe 0.10.21 wheel "
        "does not ship and this service cannot download; use StreamSelfieSegmentation for a person mask",
    M.STREAM_OBJECT_DETECTION:
        "object detection needs an object detector model (e.g. MediaPipe's efficientdet_lite0.tflite / "
        "ssd_mobilenet), which is not shipped offline with mediapipe 0.10.21; use StreamObjectTracking for faces "
        "and people",
    M.STREAM_OBJECT_DETECTION3D:
        "3-D object detection needs MediaPipe Objectron's object_detection_3d_*.tflite models, which the "
        "mediapipe 0.10.21 wheel does not ship (only the graph)",
}


NO_PICTURE = "this compressed frame holds no picture (parameter sets only)"


def _meta(req) -> dict:
    return dict(req.metadata) if hasattr(req, "metadata") else {}


def _face_models(meta, default: str, what: str) -> tuple[str, ...]:
    try:
        return faces.face_models(meta, default)
    except ValueError as e:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: {e}") from None


MAX_POSES_LIMIT = 16


def _people_options(meta, what: str) -> dict:
    """max_poses (1-16, default 4), person_tiles (auto / on / off), redetect_every (frames, default 10)."""
    out = {}
    for key, default, lo, hi in (("max_poses", 4, 1, MAX_POSES_LIMIT), ("redetect_every", 10, 1, 10000)):
        raw = (meta.get(key) or "").strip() if meta else ""
        try:
            out[key] = int(raw) if raw else default
        except ValueError:
            out[key] = None
        if out[key] is None or not lo <= out[key] <= hi:
            raise WorkerError("INVALID_ARGUMENT", f"{what}: metadata {key}={raw!r}: an integer from {lo} to {hi}")
    tiles = ((meta.get("person_tiles") if meta else None) or "auto").strip().lower()
    if tiles not in person_detector.TILE_MODES:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: metadata person_tiles={tiles!r}: use 'auto', 'on' or 'off'")
    out["tiles"] = tiles
    return out


class _CallState:
    """A stream's state dict, or a throw-away one for a call without a stream (closed after the call)."""

    def __init__(self, ctx: RequestContext):
        self.temp = ctx.stream_state is None
        self.state = {} if self.temp else ctx.stream_state
        # frames of one stream arrive one at a time; the lock keeps the stream's MediaPipe instances
        # single-threaded even if a transport ever overlaps two frames of one stream
        self.lock = self.state.setdefault("_lock", threading.Lock())

    def __enter__(self) -> dict:
        self.lock.acquire()
        return self.state

    def __exit__(self, *exc):
        self.lock.release()
        if self.temp:
            for v in self.state.values():
                if hasattr(v, "close"):
                    with contextlib.suppress(Exception):
                        v.close()


class VisionService:
    def __init__(self, options: Optional[dict] = None, pool_size: int = 2):
        self.options = options or {}
        self.max_bytes = int(self.options.get("max_frame_bytes") or frames.DEFAULT_MAX_BYTES)
        self.max_response = fit.max_response_bytes(self.options)   # the client's message limit (fit.py)
        self.pool = solutions.StaticPool(max_per_kind=pool_size)
        # FFmpeg threads of one stream's decoder/encoder: the worker's thread budget shared by its handler threads
        self.codec_threads = max(1, int(self.options.get("threads") or 1) // max(1, pool_size))
        # the person detector and the pose landmark model, shared by every call (multipose.py; loaded once)
        self._people_lock = threading.Lock()
        self._people_models: Optional[tuple] = None

    def close(self) -> None:
        self.pool.close()
        with self._people_lock:
            models, self._people_models = self._people_models, None
        for m in models or ():
            m.close()

    def warm(self) -> None:
        """Build one static instance of the common solutions (model load before READY)."""
        self.pool.warm("face_detection_short", "face_detection_full", "hands", "pose")
        self._people()

    def handlers(self) -> dict[str, Callable[[RequestContext], bytes]]:
        stream = self._video_stream
        h = {
            M.DETECT_FACES: self.detect_faces,
            M.DETECT_HANDS: self.detect_hands,
            M.DETECT_POSE: self.detect_pose,
            M.STREAM_FACE_DETECTION: stream(pb.FaceDetectionResponse, self._face_detection_step),
            M.STREAM_HAND_TRACKING: stream(pb.HandDetectionResponse, self._hand_tracking_step),
            M.STREAM_POSE_TRACKING: stream(pb.PoseDetectionResponse, self._pose_tracking_step),
            M.STREAM_HOLISTIC_TRACKING: stream(pb.HolisticTrackingResponse, self._holistic_step),
            M.STREAM_FACE_MESH: stream(pb.FaceMeshResponse, self._face_mesh_step),
            M.STREAM_IRIS_TRACKING: stream(pb.IrisTrackingResponse, self._iris_step),
            M.STREAM_SELFIE_SEGMENTATION: stream(pb.SegmentationResponse, self._segmentation_step),
            M.STREAM_OBJECT_TRACKING: stream(pb.ObjectTrackingResponse, self._object_tracking_step),
            M.STREAM_AUTO_FLIP: stream(pb.VideoFrame, self._autoflip_step),
            M.STREAM_TEMPLATE_MATCHING: self.stream_template_matching,
            M.PROCESS_MEDIA_SEQUENCE: self.process_media_sequence,
        }
        for path, why in UNIMPLEMENTED.items():
            h[path] = self._unimplemented(M.method_name(path), why)
        return h

    # ---------------------------------------------------------------- input
    def _image(self, ctx: RequestContext) -> tuple[pb.ImageRequest, np.ndarray]:
        req = pb.ImageRequest.FromString(ctx.payload)
        rgb = frames.decode(ctx.side.field(req, "image_data"), req.format or "", req.width, req.height, what="image",
                            max_bytes=self.max_bytes)
        return req, rgb

    def _video_stream(self, answer_cls, step: Callable) -> "_VideoStream":
        return _VideoStream(self, answer_cls, step)

    @staticmethod
    def _unimplemented(name: str, why: str):
        def handler(ctx: RequestContext) -> bytes:
            raise WorkerError("UNIMPLEMENTED", f"{name}: {why}")
        return handler

    # ---------------------------------------------------------------- unary
    def detect_faces(self, ctx: RequestContext) -> bytes:
        req, rgb = self._image(ctx)
        # both BlazeFace models, tiles for small faces, every box verified on its crop (face_search.py)
        kinds = _face_models(_meta(req), "both", "image")
        found = face_search.search(self.pool.acquire, rgb, kinds, check=ctx.check_cancelled)
        resp = pb.FaceDetectionResponse()
        resp.faces.extend(faces.to_proto(f) for f in found)
        return resp.SerializeToString()

    def detect_hands(self, ctx: RequestContext) -> bytes:
        req, rgb = self._image(ctx)
        with self.pool.acquire("hands") as sol:
            found = hands.detect(sol, rgb, hands.is_mirrored(_meta(req)))
        resp = pb.HandDetectionResponse()
        resp.hands.extend(hands.to_proto(h) for h in found)
        return resp.SerializeToString()

    def _people(self) -> tuple:
        """(person detector, pose landmark model): one of each, shared; each serialises its own runs."""
        with self._people_lock:
            if self._people_models is None:
                self._people_models = (person_detector.PersonDetector(threads=self.codec_threads),
                                       pose_landmarker.PoseLandmarker(threads=self.codec_threads))
            return self._people_models

    def detect_pose(self, ctx: RequestContext) -> bytes:
        req, rgb = self._image(ctx)
        # every person: the person detector, then the landmark model on each one's ROI (multipose.py)
        opts = _people_options(_meta(req), "image")
        det, lm = self._people()
        found = multipose.detect(det, lm, rgb, opts["max_poses"], opts["tiles"], check=ctx.check_cancelled)
        resp = pb.PoseDetectionResponse()
        resp.poses.extend(pose.to_proto(pp.pose) for pp in found)      # left to right
        return resp.SerializeToString()

    # ---------------------------------------------------------------- stream steps (see _video_stream)
    def _face_detection_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, resp) -> None:
        kinds = _face_models(req.metadata, "short", what)
        if len(kinds) == 1:     # one pass of one model per frame (the stream's own instance)
            found = faces.detect(solutions.stream_solution(st, kinds[0]), rgb)
        else:                   # face_model=both: the DetectFaces search on this stream's instances
            found = face_search.search(lambda k: contextlib.nullcontext(solutions.stream_solution(st, k)),
                                       rgb, kinds, check=ctx.check_cancelled)
        resp.faces.extend(faces.to_proto(f) for f in found)

    def _hand_tracking_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, resp) -> None:
        found = hands.detect(solutions.stream_solution(st, "hands"), rgb, hands.is_mirrored(req.metadata))
        resp.hands.extend(hands.to_proto(h) for h in found)

    def _pose_tracker(self, st: dict, meta, what: str) -> multipose.PoseTracker:
        """The stream's people tracks (metadata read on the first frame)."""
        tr = st.get("pose_tracker")
        if tr is None:
            o = _people_options(meta, what)
            tr = st["pose_tracker"] = multipose.PoseTracker(o["max_poses"], o["redetect_every"], tiles=o["tiles"])
        return tr

    def _tracked_people(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str) -> list:
        tr = self._pose_tracker(st, req.metadata, what)
        det, lm = self._people()
        return tr.update(det, lm, rgb, check=ctx.check_cancelled)

    def _pose_tracking_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, resp) -> None:
        found = self._tracked_people(ctx, st, req, rgb, what)
        resp.poses.extend(pose.to_proto(pp.pose, pp.track_id) for pp in found)     # by track id

    def _holistic_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, resp) -> None:
        found = self._tracked_people(ctx, st, req, rgb, what)
        sol = st.get("mp:holistic_static")
        if sol is None and found:
            sol = st["mp:holistic_static"] = solutions.create("holistic", True)
        for pp in found:       # face and hands from the holistic solution on each person's ROI
            ctx.check_cancelled()
            pp.parts = multipose.holistic_parts(sol, rgb, pp)
        holistic.fill(resp, found, solutions.stream_solution(st, faces.SHORT), rgb, hands.is_mirrored(req.metadata))

    def _meshes(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str) -> list:
        """Every face's mesh, by track id: detect, then landmark each face on its own crop (face_landmarks.py)."""
        meta = dict(req.metadata)
        kinds = _face_models(meta, "both", what)
        try:
            limit = face_landmarks.max_faces(meta)
        except ValueError as e:
            raise WorkerError("INVALID_ARGUMENT", f"{what}: {e}") from None
        tracker = st.get("face_tracker")
        if tracker is None:
            tracker = st["face_tracker"] = face_landmarks.FaceTracker()
        return tracker.update(lambda k: contextlib.nullcontext(solutions.stream_solution(st, k)), rgb, limit, kinds,
                              check=ctx.check_cancelled)

    def _face_mesh_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, resp) -> None:
        resp.faces.extend(mesh.from_array(t.mesh.points, t.mesh.confidence, t.track_id)
                          for t in self._meshes(ctx, st, req, rgb, what))

    def _iris_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, resp) -> None:
        h, w = rgb.shape[:2]
        for i, t in enumerate(self._meshes(ctx, st, req, rgb, what)):
            # the first face (lowest id) in the response's own fields, every further one in more_faces
            dst = resp if i == 0 else resp.more_faces.add()
            dst.track_id = t.track_id
            iris_gaze.to_response(t.mesh.points, w, h, t.mesh.confidence, dst)

    def _segmentation_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, resp) -> None:
        meta = dict(req.metadata)
        h, w = rgb.shape[:2]
        if req.background_image:
            segmentation.set_background(st, req.background_image, w, h, what, self.max_bytes)
        soft = segmentation.segment(solutions.stream_solution(st, segmentation.model_kind(meta)), rgb)
        segmentation.compose(rgb, soft, meta, st, what, resp, self.max_response)

    def stream_template_matching(self, ctx: RequestContext) -> bytes:
        # stateless per frame: no stream state, no MediaPipe instance
        req = pb.TemplateMatchingRequest.FromString(ctx.payload)
        what = f"frame {req.frame_number}" if req.frame_number else "frame"
        data = ctx.side.field(req, "frame_data")
        ffmt = template.infer_format(data, req.frame_format, req.frame_width, req.frame_height)
        frame = frames.decode(data, ffmt, req.frame_width, req.frame_height, what=what, max_bytes=self.max_bytes)
        tfmt = template.infer_format(req.template_data, req.template_format, req.template_width, req.template_height)
        tmpl = frames.decode(req.template_data, tfmt, req.template_width, req.template_height,
                             what=f"{what} template", max_bytes=self.max_bytes)
        for name, value in (("threshold", req.threshold), ("max_overlap", req.max_overlap)):
            if not math.isfinite(value):
                raise WorkerError("INVALID_ARGUMENT", f"{what}: {name} is {value}; send a finite number in [0, 1]")
        thr = req.threshold if req.threshold > 0 else 0.8
        if thr > 1:
            raise WorkerError("INVALID_ARGUMENT", f"{what}: threshold {thr} is above 1 (scores are normalised correlations)")
        found = template.match(frame, tmpl, thr, req.max_matches if req.max_matches > 0 else 100,
                               req.max_overlap if req.max_overlap > 0 else 0.3, what)
        resp = pb.TemplateMatchingResponse(timestamp_ms=req.timestamp_ms, frame_number=req.frame_number)
        for x, y, tw, th, s in found:
            resp.matches.add(x=x, y=y, confidence=s, width=tw, height=th)
        return resp.SerializeToString()

    def _subjects(self, st: dict, rgb: np.ndarray, meta: dict, what: str,
                  min_person: float = 0.5) -> list[tuple[str, tuple, float]]:
        """Faces and people in this frame: [(label, normalised (x, y, w, h), score)] (tracking.py).

        Metadata: `track` (or `detect`) people,faces; `face_model` (default full); `person_tiles`
        auto / on / off (tracking.find_people)."""
        try:
            labels = tracking.parse_targets(meta.get("track") or meta.get("detect"))
        except ValueError as e:
            raise WorkerError("INVALID_ARGUMENT", f"{what}: metadata track={e}") from None
        which = (meta.get("people_detector") or "blazepose").strip().lower()
        if which not in ("blazepose", "pose"):
            raise WorkerError("INVALID_ARGUMENT", f"{what}: metadata people_detector={which!r}: people come from the "
                                                  "BlazePose person detector ('blazepose'); OpenCV's HOG was removed "
                                                  "(false boxes on the background, ids lost between frames)")
        tiles = (meta.get("person_tiles") or "auto").strip().lower()
        if tiles not in person_detector.TILE_MODES:
            raise WorkerError("INVALID_ARGUMENT", f"{what}: metadata person_tiles={tiles!r}: use 'auto', 'on' or 'off'")
        out = []
        if "face" in labels:
            kinds = _face_models(meta, "full", what)
            if len(kinds) == 1:
                found = faces.detect(solutions.stream_solution(st, kinds[0]), rgb)
            else:
                found = face_search.search(lambda k: contextlib.nullcontext(solutions.stream_solution(st, k)),
                                           rgb, kinds, check=None)
            out += [("face", f.box, f.score) for f in found]
        if "person" in labels:
            det = st.get("person_detector")
            if det is None:
                det = st["person_detector"] = person_detector.PersonDetector(threads=1)
            h, w = rgb.shape[:2]
            out += [("person", tracking.person_box(p, w, h), p.score)
                    for p in tracking.find_people(det, rgb, tiles, min_person)]
        return out

    def _object_tracking_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, resp) -> None:
        meta = dict(req.metadata)
        tr = st.get("tracker")
        if tr is None:
            try:
                tl = int(meta.get("trajectory_length", 30))
                mm = int(meta.get("max_missed", 30))
                labels = tracking.parse_targets(meta.get("track") or meta.get("detect"))
            except ValueError as e:
                raise WorkerError("INVALID_ARGUMENT", f"{what}: trajectory_length / max_missed must be integers, "
                                                      f"track people and/or faces ({e})") from None
            tr = st["tracker"] = tracking.ObjectTracker(labels, trajectory_len=max(1, tl), max_missed=max(0, mm))
        h, w = rgb.shape[:2]
        subs = self._subjects(st, rgb, meta, what, min_person=tracking.PERSON_MIN_SCORE)
        people = tr.trackers.get("person") if tr.size == (w, h) else None
        if people is not None:      # people missed by this frame's detection, looked for where tracked
            found = [b for label, b, _ in subs if label == "person"]
            subs += [("person", b, s) for b, s in tracking.look_again(st["person_detector"], rgb, people, found)]
        tracks = tr.update(subs, w, h)
        resp.objects.extend(tracking.to_proto(t, w, h) for t in tracks)

    def _autoflip_step(self, ctx: RequestContext, st: dict, req, rgb: np.ndarray, what: str, out) -> None:
        meta = dict(req.metadata)
        aspect = autoflip.parse_aspect(meta.get("aspect_ratio", "9:16"), what)
        subs = self._subjects(st, rgb, meta, what)
        rf = st.setdefault("reframer", autoflip.Reframer())
        h, w = rgb.shape[:2]
        weights = [(box, score * (2.0 if label == "face" else 1.0)) for label, box, score in subs]
        x, y, cw, ch = rf.update(w, h, aspect, weights)
        crop = np.ascontiguousarray(rgb[y:y + ch, x:x + cw])
        in_fmt = frames.ALIASES.get(req.format.lower(), req.format.lower())
        out_fmt = meta.get("output_format") or (in_fmt if in_fmt in ("rgb", "bgr", "rgba") else "rgb")
        out.metadata.update({"crop_x": str(x), "crop_y": str(y), "crop_width": str(cw), "crop_height": str(ch),
                             "aspect_ratio": f"{aspect:.4f}", "subjects": str(len(subs))})
        # the frame gets what the client's message limit leaves (its note, format and size fields included)
        budget = self.max_response - out.ByteSize() - 512 - fit.FIELD_OVERHEAD
        if out_fmt.strip().lower() in autoflip.H264_NAMES:
            data, used, ow, oh, note = autoflip.h264_output(st, crop, req.timestamp_ms, budget, what,
                                                            self.codec_threads)
        else:
            data, used, ow, oh, note = fit.fit_frame(crop, out_fmt, budget, what)
        out.frame_data, out.format, out.width, out.height = data, used, ow, oh
        if note:
            out.metadata["response_limit"] = note

    def process_media_sequence(self, ctx: RequestContext) -> bytes:
        with _CallState(ctx) as st:
            seq = st.get("sequence")
            if seq is None:
                seq = st["sequence"] = sequence.SequenceState()
            if ctx.header.get("end"):
                return sequence.summarise(seq).SerializeToString()
            req = pb.MediaSequenceFrame.FromString(ctx.payload)
            index = len(seq.records)
            what = f"frame {req.frame_number}" if req.frame_number else f"frame #{index} of the sequence"
            rgb = frames.decode_in_stream(st, ctx.side.field(req, "frame_data"), req.format, req.width, req.height,
                                          what=what, max_bytes=self.max_bytes, threads=self.codec_threads)
            if rgb is None:
                return b""   # a compressed frame without a picture: nothing to label
            scores: dict[str, float] = {}
            fs = faces.detect(solutions.stream_solution(st, "face_detection_full"), rgb)
            if fs:
                scores["face"] = max(f.score for f in fs)
            p = pose.detect(solutions.stream_solution(st, "pose"), rgb)
            if p is not None and p.score > 0.3:
                scores["person"] = p.score
            hs = hands.detect(solutions.stream_solution(st, "hands"), rgb)
            if hs:
                scores["hand"] = max(h.score for h in hs)
            for hd in hs:
                if hd.gesture is not None:
                    scores[hd.gesture[0]] = max(scores.get(hd.gesture[0], 0.0), hd.gesture[1])
            seq.add(sequence.FrameRecord(index, req.frame_number, req.timestamp_ms, scores, len(fs), len(hs)),
                    req.features)
            return b""


class _VideoStream:
    """The handler of one VideoFrame stream method, in two stages. `prepare(ctx)` parses the frame and
    decodes its picture (compressed video through the stream's own decoder); the worker base runs it for
    frame k+1 on another handler thread while frame k's step runs (workers/base.py), so a stream's decode
    and its model overlap. `handler(ctx)` then, under the stream's state, has `step(ctx, state, req, rgb,
    what, answer)` fill `answer` (an `answer_cls` with the frame's timestamp and number). A compressed frame
    without a picture gets that answer empty. Each stage is one frame at a time, in order: prepares
    under the state's decode lock, steps under its lock."""

    def __init__(self, service: "VisionService", answer_cls, step: Callable):
        self.service, self.answer_cls, self.step = service, answer_cls, step

    def prepare(self, ctx: RequestContext, st: Optional[dict] = None) -> tuple:
        """(req, rgb or None, what) of this frame."""
        if st is None:
            st = ctx.stream_state if ctx.stream_state is not None else {}
        with st.setdefault("_decode_lock", threading.Lock()):
            req = pb.VideoFrame.FromString(ctx.payload)
            n = st.get("_frames", 0)
            st["_frames"] = n + 1
            what = f"frame {req.frame_number}" if req.frame_number or n == 0 else f"frame #{n} of the stream"
            svc = self.service
            rgb = frames.decode_in_stream(st, ctx.side.field(req, "frame_data"), req.format, req.width, req.height,
                                          what=what, max_bytes=svc.max_bytes, threads=svc.codec_threads)
        return req, rgb, what

    def __call__(self, ctx: RequestContext) -> bytes:
        with _CallState(ctx) as st:
            req, rgb, what = ctx.prepared.result() if ctx.prepared is not None else self.prepare(ctx, st)
            answer = self.answer_cls(timestamp_ms=req.timestamp_ms, frame_number=req.frame_number)
            if rgb is None:
                if self.answer_cls is pb.VideoFrame:
                    answer.metadata["no_picture"] = NO_PICTURE
            else:
                self.step(ctx, st, req, rgb, what, answer)
            return answer.SerializeToString()
