"""The generated protobuf modules against the wire contracts they implement.

1. protos/ml_inference.proto against docs/contract/ml_inference.md (the orchestrator's `ml` client):
   package, services, methods, streaming shapes, request/response types, and every listed field's
   number, name and type. Extension (new fields / messages / methods / services) is allowed;
   renumbering, retyping, renaming or removing a listed field is not.
2. The committed generated modules are exactly what scripts/gen_protos.sh produces.
3. protos/kserve/grpc_service.proto against what stock tritonclient[grpc] needs.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protos import ml_inference_pb2, pythonml_pb2  # noqa: E402
from protos.kserve import grpc_service_pb2  # noqa: E402

CONTRACT = ROOT / "docs" / "contract" / "ml_inference.md"
PROTO_SOURCES = ["protos/ml_inference.proto", "protos/pythonml.proto", "protos/kserve/grpc_service.proto"]

SCALARS = {
    "double": FieldDescriptor.TYPE_DOUBLE,
    "float": FieldDescriptor.TYPE_FLOAT,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "int32": FieldDescriptor.TYPE_INT32,
    "fixed64": FieldDescriptor.TYPE_FIXED64,
    "fixed32": FieldDescriptor.TYPE_FIXED32,
    "bool": FieldDescriptor.TYPE_BOOL,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "sfixed32": FieldDescriptor.TYPE_SFIXED32,
    "sfixed64": FieldDescriptor.TYPE_SFIXED64,
    "sint32": FieldDescriptor.TYPE_SINT32,
    "sint64": FieldDescriptor.TYPE_SINT64,
}
SHAPES = {"U": (False, False), "S": (False, True), "C": (True, False), "B": (True, True)}


# --------------------------------------------------------------------------------------------
# Contract parsing
# --------------------------------------------------------------------------------------------


def parse_contract(text: str):
    """Return (services, messages) from the contract markdown.

    services: {service: [(method, shape, request_type, response_type)]}
    messages: {message: [(number, name, type_str)]}
    """
    services: dict[str, list[tuple[str, str, str, str]]] = {}
    messages: dict[str, list[tuple[int, str, str]]] = {}
    current = None
    in_messages = False
    for line in text.splitlines():
        m = re.match(r"^##\s+service\s+(\w+)\s*$", line)
        if m:
            current = m.group(1)
            services[current] = []
            in_messages = False
            continue
        if line.startswith("## "):
            current = None
            in_messages = line.startswith("## Messages")
            continue
        if current is not None and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 3 or cells[0] in ("method", "") or set(cells[0]) <= set("-"):
                continue
            method, shape, sig = cells
            sm = re.fullmatch(r"(\w+)\s*→\s*(stream\s+)?(\w+)", sig)
            assert sm, f"cannot parse signature {sig!r} of {current}.{method}"
            assert shape in SHAPES, f"unknown shape {shape!r} of {current}.{method}"
            # "stream X" in the response column must agree with the shape letter.
            assert bool(sm.group(2)) == SHAPES[shape][1] or shape == "B", (current, method, shape, sig)
            services[current].append((method, shape, sm.group(1), sm.group(3)))
            continue
        if in_messages:
            mm = re.match(r"^- \*\*(\w+)\*\*:\s*(.*)$", line)
            if not mm:
                continue
            name, body = mm.group(1), mm.group(2)
            body = re.sub(r"\([^)]*\)", "", body)  # drop parenthetical comments
            fields = []
            for part in body.split(";"):
                part = part.strip()
                if not part:
                    continue
                fm = re.fullmatch(r"(\d+)\s+(\w+)\s+(repeated\s+\w+|map<\s*\w+\s*,\s*\w+\s*>|\w+)", part)
                assert fm, f"cannot parse field {part!r} of message {name}"
                fields.append((int(fm.group(1)), fm.group(2), re.sub(r"\s+", " ", fm.group(3))))
            messages[name] = fields
    return services, messages


CONTRACT_SERVICES, CONTRACT_MESSAGES = parse_contract(CONTRACT.read_text(encoding="utf-8"))


def test_contract_parsed_completely():
    # Guards against a parser that silently finds nothing (which would make the checks vacuous).
    assert set(CONTRACT_SERVICES) == {"ModelManagementService", "TransformersService", "MediapipeService"}
    assert sum(len(v) for v in CONTRACT_SERVICES.values()) == 24
    assert len(CONTRACT_MESSAGES) >= 45
    assert CONTRACT_MESSAGES["EmptyRequest"] == []
    assert (7, "metadata", "map<string,string>") in CONTRACT_MESSAGES["VideoFrame"]
    assert (1, "landmarks", "repeated Landmark") in CONTRACT_MESSAGES["FaceMesh"]


def test_contract_copy_is_verbatim():
    shared = ROOT.parent / "shared" / "contract" / "ml_inference.md"
    if not shared.exists():
        pytest.skip("../shared/contract/ml_inference.md not present")
    assert CONTRACT.read_bytes() == shared.read_bytes()


# --------------------------------------------------------------------------------------------
# ml package against the contract
# --------------------------------------------------------------------------------------------


def test_ml_package():
    assert ml_inference_pb2.DESCRIPTOR.package == "ml"


@pytest.mark.parametrize("service", sorted(CONTRACT_SERVICES))
def test_ml_service_methods(service):
    fd = ml_inference_pb2.DESCRIPTOR
    assert service in fd.services_by_name, f"service ml.{service} missing"
    sd = fd.services_by_name[service]
    for method, shape, req, resp in CONTRACT_SERVICES[service]:
        assert method in sd.methods_by_name, f"method ml.{service}/{method} missing"
        md = sd.methods_by_name[method]
        assert (md.client_streaming, md.server_streaming) == SHAPES[shape], (
            f"ml.{service}/{method}: streaming shape must be {shape}"
        )
        assert md.input_type.full_name == f"ml.{req}", f"ml.{service}/{method} request type"
        assert md.output_type.full_name == f"ml.{resp}", f"ml.{service}/{method} response type"


def _check_field(fd: FieldDescriptor, type_str: str, pkg: str, where: str):
    is_map = fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry
    is_repeated = fd.label == FieldDescriptor.LABEL_REPEATED

    def check_single(t: str, f: FieldDescriptor, what: str):
        if t in SCALARS:
            assert f.type == SCALARS[t], f"{what}: must be {t}"
        else:
            assert f.type == FieldDescriptor.TYPE_MESSAGE, f"{what}: must be message {t}"
            assert f.message_type.full_name == f"{pkg}.{t}", f"{what}: must be {pkg}.{t}"

    m = re.fullmatch(r"map<(\w+),(\w+)>", type_str.replace(" ", ""))
    if m:
        assert is_map, f"{where}: must be {type_str}"
        entry = fd.message_type
        check_single(m.group(1), entry.fields_by_name["key"], f"{where} (map key)")
        check_single(m.group(2), entry.fields_by_name["value"], f"{where} (map value)")
        return
    assert not is_map, f"{where}: must be {type_str}, not a map"
    if type_str.startswith("repeated "):
        assert is_repeated, f"{where}: must be {type_str}"
        check_single(type_str.split()[1], fd, where)
    else:
        assert not is_repeated, f"{where}: must be singular {type_str}"
        check_single(type_str, fd, where)


@pytest.mark.parametrize("message", sorted(CONTRACT_MESSAGES))
def test_ml_message_fields(message):
    fd = ml_inference_pb2.DESCRIPTOR
    assert message in fd.message_types_by_name, f"message ml.{message} missing"
    desc = fd.message_types_by_name[message]
    for number, name, type_str in CONTRACT_MESSAGES[message]:
        where = f"ml.{message} field {number} ({name} {type_str})"
        assert number in desc.fields_by_number, f"{where}: missing"
        field = desc.fields_by_number[number]
        assert field.name == name, f"{where}: named {field.name!r}"
        _check_field(field, type_str, "ml", where)


# --------------------------------------------------------------------------------------------
# pythonml.v1 extension (fields other modules code against)
# --------------------------------------------------------------------------------------------

PYTHONML_FIELDS = {
    "StatsResponse": "1 workers repeated WorkerStats; 2 pools repeated PoolStats; 3 uptime_s double; "
    "4 malformed_frames int64",
    "PoolStats": "1 pool string; 2 device string; 3 live_workers int32; 4 queue_depth int32; "
    "5 queue_limit int32; 6 rejected int64; 7 expired int64",
    "WorkerStats": "1 pid int32; 2 pool string; 3 device string; 4 state string; 5 rss_mb double; "
    "6 uss_mb double; 7 pss_mb double; 8 cuda_allocated_mb double; 9 cuda_reserved_mb double; "
    "10 inflight int32; 11 queue_depth int32; 12 restarts int32; 13 uptime_s double; "
    "14 models repeated ModelStats; 15 capacity int32; 16 requests_served int64; 17 worker_id string",
    "ModelStats": "1 model_id string; 2 pipeline_type string; 3 ram_mb double; 4 vram_mb double; "
    "5 loaded_at int64",
    "EchoRequest": "1 pool string; 2 device string; 3 action string; 4 payload bytes; 5 sleep_ms int32; "
    "6 parts int32; 7 model string; 8 grow_mb int64",
    "EchoReply": "1 payload bytes; 2 part int32; 3 pid int32; 4 worker_id string; 5 sha256 string",
}


def test_pythonml_extension():
    fd = pythonml_pb2.DESCRIPTOR
    assert fd.package == "pythonml.v1"
    stats = fd.services_by_name["Stats"].methods_by_name["GetStats"]
    assert (stats.client_streaming, stats.server_streaming) == SHAPES["U"]
    assert (stats.input_type.name, stats.output_type.name) == ("StatsRequest", "StatsResponse")
    echo = fd.services_by_name["Diagnostics"].methods_by_name["Echo"]
    assert (echo.client_streaming, echo.server_streaming) == SHAPES["S"]
    assert (echo.input_type.name, echo.output_type.name) == ("EchoRequest", "EchoReply")
    for message, spec in PYTHONML_FIELDS.items():
        desc = fd.message_types_by_name[message]
        for part in spec.split(";"):
            number, name, type_str = part.strip().split(" ", 2)
            where = f"pythonml.v1.{message} field {number} ({name} {type_str})"
            field = desc.fields_by_number[int(number)]
            assert field.name == name, where
            _check_field(field, type_str, "pythonml.v1", where)


# --------------------------------------------------------------------------------------------
# Reproducible code generation
# --------------------------------------------------------------------------------------------


def test_generated_code_is_reproducible(tmp_path):
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", "-I.",
        f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
        *PROTO_SOURCES,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    expected = sorted(
        Path(src[: -len(".proto")] + suffix)
        for src in PROTO_SOURCES
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    )
    assert generated == expected
    stale = [str(rel) for rel in generated if (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"generated code is stale; run scripts/gen_protos.sh: {stale}"


# --------------------------------------------------------------------------------------------
# KServe v2 / Open Inference Protocol
# --------------------------------------------------------------------------------------------

KSERVE_METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse"),
    "RepositoryModelLoad": ("RepositoryModelLoadRequest", "RepositoryModelLoadResponse"),
    "RepositoryModelUnload": ("RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse"),
}


def test_kserve_service_has_tritonclient_methods():
    fd = grpc_service_pb2.DESCRIPTOR
    assert fd.package == "inference"
    sd = fd.services_by_name["GRPCInferenceService"]
    assert sd.full_name == "inference.GRPCInferenceService"
    for method, (req, resp) in KSERVE_METHODS.items():
        md = sd.methods_by_name[method]
        assert (md.client_streaming, md.server_streaming) == (False, False), method
        assert md.input_type.full_name == f"inference.{req}", method
        assert md.output_type.full_name == f"inference.{resp}", method
    grpc_src = (ROOT / "protos" / "kserve" / "grpc_service_pb2_grpc.py").read_text()
    for method in KSERVE_METHODS:
        assert f"'/inference.GRPCInferenceService/{method}'" in grpc_src, method
    # Spot checks of the fields every client relies on.
    req = fd.message_types_by_name["ModelInferRequest"]
    assert req.fields_by_name["raw_input_contents"].number == 7
    assert req.fields_by_name["raw_input_contents"].type == FieldDescriptor.TYPE_BYTES
    resp = fd.message_types_by_name["ModelInferResponse"]
    assert resp.fields_by_name["raw_output_contents"].number == 6


def _message_table(file_proto: descriptor_pb2.FileDescriptorProto) -> dict:
    """{full message name: sorted [(number, name, label, type, type_name, oneof_index)]}, nested included."""
    table: dict[str, list] = {}

    def walk(msgs, prefix):
        for m in msgs:
            full = f"{prefix}.{m.name}"
            table[full] = sorted(
                [f.number, f.name, f.label, f.type, f.type_name,
                 f.oneof_index if f.HasField("oneof_index") else -1]
                for f in m.field
            )
            walk(m.nested_type, full)

    walk(file_proto.message_type, file_proto.package)
    return table


# tritonclient's bundled service_pb2 defines the same `inference.*` symbols in the default descriptor
# pool under another file name, so it cannot be imported in this process next to ours ("duplicate
# symbol"). Read its descriptor in a subprocess instead.
_TRITON_DUMP = textwrap.dedent(
    """
    import base64, json, sys
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2
    fdp = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(fdp)
    sys.stdout.write(base64.b64encode(fdp.SerializeToString()).decode())
    """
)


def test_kserve_fields_match_tritonclient():
    probe = subprocess.run(
        [sys.executable, "-c", "import tritonclient.grpc.service_pb2"], capture_output=True, timeout=120
    )
    if probe.returncode != 0:
        pytest.skip("tritonclient[grpc] not importable")
    proc = subprocess.run(
        [sys.executable, "-c", _TRITON_DUMP], capture_output=True, text=True, timeout=120, check=True
    )
    theirs_fdp = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(proc.stdout))
    ours_fdp = descriptor_pb2.FileDescriptorProto()
    grpc_service_pb2.DESCRIPTOR.CopyToProto(ours_fdp)
    assert theirs_fdp.package == ours_fdp.package == "inference"

    theirs, ours = _message_table(theirs_fdp), _message_table(ours_fdp)
    # Every message we define (nested and map entries included) is field-for-field Triton's.
    for name, fields in ours.items():
        assert name in theirs, f"{name} is not in tritonclient's grpc_service.proto"
        assert fields == theirs[name], f"{name} differs from tritonclient's:\n ours   {fields}\n theirs {theirs[name]}"
    for name in ("ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse", "InferTensorContents"):
        assert f"inference.{name}" in ours

    # Same method signatures as tritonclient's service for the methods we implement.
    their_methods = {m.name: m for m in theirs_fdp.service[0].method}
    assert theirs_fdp.service[0].name == "GRPCInferenceService"
    for m in ours_fdp.service[0].method:
        t = their_methods[m.name]
        assert (m.input_type, m.output_type, m.client_streaming, m.server_streaming) == (
            t.input_type, t.output_type, t.client_streaming, t.server_streaming
        ), m.name
