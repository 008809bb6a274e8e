"""Security rows 1-6 and 14: a request never names code to load, a host to contact or a file outside the
model folders, and thread/worker counts stay within the worker's budget (common/model_access.py,
common/load_options.py). Unit tests drive the real handlers; the integration test goes through run.py."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import grpc
import pytest

from common.load_options import OPERATOR_ONLY, check_load_options
from common.model_access import ModelRoots, read_regular_file
from common.status import StatusError
from protos import ml_inference_pb2 as ML
from protos import ml_inference_pb2_grpc as MLG
from protos.kserve import grpc_service_pb2 as K
from protos.kserve import grpc_service_pb2_grpc as KG
from tests.service import start_service
from workers.context import make_test_context
from workers.hf.resolve import ModelResolver
from common import litert_catalogue as registry
from workers.litert.service import LiteRTService

FACE = "face_detection_short_range"
LOAD = "ml.ModelManagementService/LoadModel"


# ---- helpers -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def marker_lib(tmp_path_factory):
    """A shared library whose constructor writes a marker file: proof that code ran if it was loaded."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("lib")
    marker = d / "marker.txt"
    src = d / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) {\n'
                   f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n}}\n')
    so = d / "libevil.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    # the library works: loading it (here, in a throwaway process) writes the marker
    subprocess.run(["python3", "-c", f"import ctypes; ctypes.CDLL({str(so)!r})"], check=True)
    assert marker.read_text() == "ran"
    marker.unlink()
    return so, marker


class Listener:
    """A local TCP listener that records every connection it is offered (it must see none)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
                self.connections += 1
                c.close()
            except OSError:
                continue

    def close(self):
        self._stop = True
        self._t.join(2)
        self.sock.close()


def litert_load(svc, model_id, **options):
    ctx, _ = make_test_context(LOAD, payload=ML.LoadModelRequest(model_id=model_id, pipeline_type="tflite",
                                                                 options=options).SerializeToString())
    return ML.LoadModelResponse.FromString(svc.handlers()[LOAD](ctx))


def refused(fn, *args, **kw) -> StatusError:
    t0 = time.monotonic()
    with pytest.raises(StatusError) as ei:
        fn(*args, **kw)
    ei.value.elapsed = time.monotonic() - t0
    return ei.value


# ---- row 1: code -------------------------------------------------------------------------------------
def test_a_request_cannot_name_a_delegate_library(marker_lib):
    so, marker = marker_lib
    svc = LiteRTService({"threads": 1})
    try:
        err = refused(litert_load, svc, "x", alias=FACE, gpu_delegate="true", gpu_delegate_library=str(so))
        assert err.code == "PERMISSION_DENIED" and "--litert-gpu-delegate-library" in err.message
        assert not marker.exists()
        # gpu_delegate alone is allowed: the operator's library (none here) or the default, with a CPU fallback
        resp = litert_load(svc, "x", alias=FACE, gpu_delegate="true")
        assert resp.success and not marker.exists()
    finally:
        svc.close()


def test_every_operator_setting_is_refused_as_a_request_option():
    for name, flag in OPERATOR_ONLY.items():
        with pytest.raises(StatusError) as ei:
            check_load_options({name: "x"}, 2)
        assert ei.value.code == "PERMISSION_DENIED" and flag in ei.value.message
    with pytest.raises(StatusError) as ei:
        check_load_options({"library": "/tmp/x.so"}, 2)
    assert ei.value.code == "INVALID_ARGUMENT" and "unknown load option" in ei.value.message


# ---- row 2: files outside the model folders ----------------------------------------------------------
def test_model_ids_and_paths_outside_the_model_folders_are_refused(tmp_path):
    outside = tmp_path / "secret-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (outside / "secret.txt").write_text("top secret")
    resolver = ModelResolver(model_dirs=[str(tmp_path / "models")], cache_dir=str(tmp_path / "cache"))
    for mid in (str(outside), "/proc/self/root" + str(outside), "/proc/self/cwd", "/etc", "/"):
        err = refused(resolver.local, mid)
        assert err.code == "PERMISSION_DENIED" and "not inside" in err.message, mid
    # the same folder inside a --model-dir is served
    inside = ModelResolver(model_dirs=[str(tmp_path)], cache_dir=str(tmp_path / "cache"))
    assert inside.local(str(outside)).path == outside
    roots = ModelRoots([str(tmp_path / "models")])
    err = refused(read_regular_file, outside / "secret.txt", roots, 1 << 20)
    assert err.code == "PERMISSION_DENIED"


def test_get_model_file_refuses_folders_outside(tmp_path):
    import asyncio
    from facade.model_files import serve_model_file
    outside = tmp_path / "m"
    outside.mkdir()
    (outside / "config.json").write_text('{"secret": 1}')

    class Abort(Exception):
        pass

    class Ctx:
        async def abort(self, code, message):
            self.code, self.message = code, message
            raise Abort

    async def pull(model_id):
        ctx = Ctx()
        out = []
        try:
            async for chunk in serve_model_file(ML.ModelFileRequest(model_id=model_id, file_path="config.json"), ctx,
                                                ModelResolver(model_dirs=[str(tmp_path / "models")])):
                out.append(chunk.data)
        except Abort:
            pass
        return ctx, out
    for mid in (str(outside), "/proc/self/root" + str(outside)):
        ctx, out = asyncio.run(pull(mid))
        assert out == [] and ctx.code == grpc.StatusCode.PERMISSION_DENIED, mid


# ---- rows 4, 5, 6: special files, unbounded reads, what a refusal tells --------------------------------
def test_special_files_are_never_opened(tmp_path):
    svc = LiteRTService({"threads": 1, "model_dirs": [str(tmp_path)]})
    try:
        for path in ("/proc/self/fd/1", "/proc/self/fd/0", "/dev/zero", "/dev/urandom", "/proc/self/mem"):
            for _ in range(4):
                err = refused(litert_load, svc, "x", path=path)
                assert err.code == "PERMISSION_DENIED", (path, err.message)
        # inside a model folder: a FIFO (whose open would block for a writer) and a link to /dev/zero
        fifo = tmp_path / "pipe.tflite"
        os.mkfifo(fifo)
        err = refused(litert_load, svc, "x", path=str(fifo))
        assert err.code == "INVALID_ARGUMENT" and "not a regular file" in err.message
        assert err.elapsed < 5  # did not block in open()/read() (a blocked call would hang the test)
        (tmp_path / "zero.tflite").symlink_to("/dev/zero")
        err = refused(litert_load, svc, "x", path=str(tmp_path / "zero.tflite"))
        assert err.code == "PERMISSION_DENIED"
        # still serving
        assert litert_load(svc, "face", alias=FACE).success
    finally:
        svc.close()


def test_a_refusal_says_nothing_about_files_outside(tmp_path):
    svc = LiteRTService({"threads": 1})
    try:
        real = refused(litert_load, svc, "x", path="/etc/passwd")
        missing = refused(litert_load, svc, "x", path="/etc/no-such-file-here")
        assert real.code == missing.code == "PERMISSION_DENIED"
        assert real.message.replace("/etc/passwd", "P") == missing.message.replace("/etc/no-such-file-here", "P")
        size = str(os.path.getsize("/etc/passwd"))
        assert size not in real.message and "exist" not in real.message
    finally:
        svc.close()
    # hf: gguf_file must be a plain file name inside the model's folder
    err = refused(check_load_options, {"gguf_file": "/etc/passwd"}, 2)
    assert err.code == "INVALID_ARGUMENT" and "plain file name" in err.message
    err = refused(check_load_options, {"gguf_file": "../../x.gguf"}, 2)
    assert err.code == "INVALID_ARGUMENT"


# ---- row 14: thread counts ---------------------------------------------------------------------------
def test_thread_and_worker_counts_are_bounded_by_the_budget():
    for name in ("threads", "num_workers"):
        err = refused(check_load_options, {name: "64"}, 2)
        assert err.code == "INVALID_ARGUMENT" and "1..2" in err.message and "budget" in err.message
        assert check_load_options({name: "2"}, 2)
    svc = LiteRTService({"threads": 2})
    try:
        err = refused(litert_load, svc, "x", alias=FACE, threads="64")
        assert err.code == "INVALID_ARGUMENT" and "1..2" in err.message
        assert "2 thread(s)" in litert_load(svc, "x", alias=FACE, threads="2").message
    finally:
        svc.close()


# ---- all rows through the running service --------------------------------------------------------------
@pytest.mark.integration
def test_through_the_service_no_code_no_host_no_outside_file(marker_lib, tmp_path):
    so, marker = marker_lib
    listener = Listener()
    outside = tmp_path / "outside-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    try:
        with start_service(["--pools", "litert,hf", "--cuda", "off"]) as svc:
            ch = svc.channel()
            mm = MLG.ModelManagementServiceStub(ch)
            kserve = KG.GRPCInferenceServiceStub(ch)

            def code_of(fn, *a):
                with pytest.raises(grpc.RpcError) as ei:
                    fn(*a, timeout=30)
                return ei.value.code(), ei.value.details()

            # 1: code
            c, m = code_of(mm.LoadModel, ML.LoadModelRequest(model_id="evil", pipeline_type="tflite", options={
                "alias": FACE, "gpu_delegate": "true", "gpu_delegate_library": str(so)}))
            assert c == grpc.StatusCode.PERMISSION_DENIED, m
            req = K.RepositoryModelLoadRequest(model_name="evil2")
            req.parameters["alias"].string_param = FACE
            req.parameters["gpu_delegate"].bool_param = True
            req.parameters["gpu_delegate_library"].string_param = str(so)
            c, m = code_of(kserve.RepositoryModelLoad, req)
            assert c == grpc.StatusCode.PERMISSION_DENIED, m
            # 3: hosts, both pools
            for pool, ptype, opts in (("litert", "tflite", {"model_file_service": listener.address}),
                                      ("hf", "text-generation", {"file_service": listener.address,
                                                                 "file_timeout_s": "600"}),
                                      ("hf", "text-generation", {"model_file_service": listener.address})):
                c, m = code_of(mm.LoadModel, ML.LoadModelRequest(model_id="org/remote-only", pipeline_type=ptype,
                                                                 options=dict(opts, pool=pool)))
                assert c == grpc.StatusCode.PERMISSION_DENIED, m
            # 2: files outside, through GetModelFile and LoadModel
            for mid in (str(outside), "/proc/self/root" + str(outside)):
                c, m = code_of(lambda r, timeout: list(mm.GetModelFile(r, timeout=timeout)),
                               ML.ModelFileRequest(model_id=mid, file_path="config.json"))
                assert c == grpc.StatusCode.PERMISSION_DENIED, m
                c, m = code_of(mm.LoadModel, ML.LoadModelRequest(model_id=mid, pipeline_type="text-generation"))
                assert c == grpc.StatusCode.PERMISSION_DENIED, m
            # 4, 5, 6: special files and what a refusal tells
            for path in ["/proc/self/fd/1"] * 4 + ["/dev/zero", "/dev/urandom", "/etc/passwd"]:
                c, m = code_of(mm.LoadModel, ML.LoadModelRequest(model_id="x", pipeline_type="tflite",
                                                                 options={"path": path}))
                assert c == grpc.StatusCode.PERMISSION_DENIED and "bytes" not in m, m
            # 14: thread budget
            c, m = code_of(mm.LoadModel, ML.LoadModelRequest(model_id="t", pipeline_type="tflite",
                                                             options={"alias": FACE, "threads": "64"}))
            assert c == grpc.StatusCode.INVALID_ARGUMENT and "budget" in m, m
            # the litert pool still answers (no handler thread is stuck on a read)
            for _ in range(3):
                r = mm.LoadModel(ML.LoadModelRequest(model_id=FACE, pipeline_type="tflite"), timeout=30)
                assert r.success
            time.sleep(0.5)
            assert listener.connections == 0
            assert not marker.exists()
    finally:
        listener.close()
