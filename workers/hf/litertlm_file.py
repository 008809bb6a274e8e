"""Check a LiteRT-LM bundle before the engine sees it, and read what the service needs from its header.

The LiteRT-LM runtime answers any bad file with "Failed to create LiteRT-LM engine" (its reason goes to the
native log only), so a bundle is checked here first and a bad one is refused with FAILED_PRECONDITION naming
the problem: empty, not a bundle at all (and what it looks like instead: a .tflite, a GGUF, ...), a format
version newer than the runtime reads, a header or section that runs past the end of the file (an interrupted
copy), no model or tokenizer section.

`.litertlm` layout (litert-lm 0.18): bytes 0-7 "LITERTLM", 8-19 major/minor/patch (uint32 LE), 24-31 the end
of the header (uint64 LE), from byte 32 a flatbuffer LiteRTLMMetaData whose SectionMetadata lists every
section (begin and end offsets, data type). The LlmMetadataProto section (protobuf) gives the context
(`max_num_tokens`, field 5) and whether a Jinja chat template is embedded (field 7). `.task` files (MediaPipe
LLM bundles) are zip archives: only their archive directory is checked.
"""
from __future__ import annotations

import os
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from common.status import StatusError

MAGIC = b"LITERTLM"
MAX_MAJOR = 1                      # litert-lm-api 0.18.1 writes and reads format 1.x
HEADER_BEGIN, HEADER_END_AT = 32, 24
MAX_HEADER = 16 * 2**20
SECTION_TYPES = {0: "NONE", 1: "GenericBinaryData", 2: "Deprecated", 3: "TFLiteModel", 4: "SP_Tokenizer",
                 5: "LlmMetadataProto", 6: "HF_Tokenizer_Zlib", 7: "TFLiteWeights", 8: "EmbeddingMetadataProto",
                 9: "ExecutorMetadataProto", 10: "TtsMetadataProto", 11: "AsrMetadataProto"}
TOKENIZERS = ("SP_Tokenizer", "HF_Tokenizer_Zlib")


@dataclass
class BundleInfo:
    path: Path
    kind: str                            # "litertlm" | "task"
    size: int
    version: str = ""
    sections: list = field(default_factory=list)   # [(type name, begin, end)]
    max_num_tokens: Optional[int] = None  # the context the bundle was exported for
    has_template: bool = False


def _refuse(path: Path, problem: str) -> StatusError:
    return StatusError("FAILED_PRECONDITION", f"{path.name} is not a usable LiteRT-LM bundle: {problem}")


def _looks_like(head: bytes) -> str:
    if head[4:8] == b"TFL3":
        return ("it is a LiteRT .tflite model, not a language-model bundle; run it with KServe ModelInfer "
                "(inference.GRPCInferenceService)")
    if head[:4] == b"GGUF":
        return "it is a GGUF file; name its folder or the .gguf file itself to run it with transformers"
    if head[:1] in (b"{", b"["):
        return "it is a JSON text file"
    if not head:
        return "it is empty (0 bytes)"
    return (f"it starts with {head[:8]!r}, where a .litertlm bundle starts with b'LITERTLM' and a .task bundle is a "
            f"zip archive")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def llm_metadata(buf: bytes) -> dict:
    """max_num_tokens (field 5) and the presence of jinja_prompt_template (field 7) from an LlmMetadata proto."""
    out: dict = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            if num == 5:
                out["max_num_tokens"] = v
        elif wire == 1:
            i += 8
        elif wire == 2:
            n, i = _varint(buf, i)
            if num == 7:
                out["has_template"] = n > 0
            i += n
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(buf):
            raise ValueError("field runs past the section")
    return out


def _sections(header: bytes) -> list:
    """[(type name, begin, end)] from the LiteRTLMMetaData flatbuffer (SectionMetadata.objects)."""
    from flatbuffers import number_types as N
    from flatbuffers.table import Table
    root = Table(header, N.UOffsetTFlags.py_type(struct.unpack_from("<I", header, 0)[0]))
    o = root.Offset(6)                   # LiteRTLMMetaData.section_metadata
    if not o:
        return []
    sm = Table(header, root.Indirect(o + root.Pos))
    o = sm.Offset(4)                     # SectionMetadata.objects
    if not o:
        return []
    vec, n = sm.Vector(o), sm.VectorLen(o)
    out = []
    for j in range(n):
        obj = Table(header, sm.Indirect(vec + 4 * j))
        def get(slot, flags, default=0):
            off = obj.Offset(slot)
            return obj.Get(flags, off + obj.Pos) if off else default
        begin, end = get(6, N.Uint64Flags), get(8, N.Uint64Flags)
        kind = get(10, N.Uint8Flags)
        out.append((SECTION_TYPES.get(kind, f"type {kind}"), begin, end))
    return out


def _open_regular(path: Path):
    fd = os.open(str(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StatusError("INVALID_ARGUMENT", f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb"), st.st_size


def inspect(path: Path) -> BundleInfo:
    """Check the bundle at `path` (FAILED_PRECONDITION naming the problem) and return what its header says."""
    path = Path(path)
    try:
        f, size = _open_regular(path)
    except FileNotFoundError:
        raise StatusError("FAILED_PRECONDITION", f"{path.name} is gone: no file at {path}") from None
    except OSError as exc:
        raise _refuse(path, f"it cannot be opened ({exc.strerror or exc})") from None
    with f:
        head = f.read(HEADER_BEGIN)
        if head[:4] == b"PK\x03\x04":
            return _inspect_task(path, size)
        if head[:8] != MAGIC:
            raise _refuse(path, _looks_like(head))
        if len(head) < HEADER_BEGIN:
            raise _refuse(path, f"it is truncated: {size} bytes, shorter than the {HEADER_BEGIN}-byte file header")
        major, minor, patch = struct.unpack_from("<III", head, 8)
        info = BundleInfo(path, "litertlm", size, f"{major}.{minor}.{patch}")
        if major > MAX_MAJOR:
            raise _refuse(path, f"its format version is {info.version}; this runtime (litert-lm-api 0.18.1) reads "
                                f"{MAX_MAJOR}.x: convert it again with a matching litert-torch, or upgrade the runtime")
        end = struct.unpack_from("<Q", head, HEADER_END_AT)[0]
        if end > size:
            raise _refuse(path, f"it is truncated: its header ends at byte {end} but the file has {size} bytes "
                                f"(an interrupted download or copy?)")
        if end <= HEADER_BEGIN or end - HEADER_BEGIN > MAX_HEADER:
            raise _refuse(path, f"its header end offset ({end}) is not valid")
        header = f.read(end - HEADER_BEGIN)
        try:
            info.sections = _sections(header)
        except Exception as exc:  # a corrupt flatbuffer raises anything from struct.error to IndexError
            raise _refuse(path, f"its header cannot be read ({type(exc).__name__}: {exc})") from None
        for i, (name, begin, stop) in enumerate(info.sections):
            if not begin <= stop <= size or begin < end:
                raise _refuse(path, f"it is truncated or corrupt: section {i} ({name}) spans bytes {begin}-{stop} "
                                    f"but the file has {size} bytes (an interrupted download or copy?)")
        names = {s[0] for s in info.sections}
        if "TFLiteModel" not in names:
            raise _refuse(path, f"it holds no TFLiteModel section (sections: {sorted(names) or 'none'})")
        if not names & set(TOKENIZERS):
            raise _refuse(path, f"it holds no tokenizer section (sections: {sorted(names)})")
        for name, begin, stop in info.sections:
            if name == "LlmMetadataProto" and stop - begin <= MAX_HEADER:
                f.seek(begin)
                try:
                    meta = llm_metadata(f.read(stop - begin))
                except ValueError as exc:
                    raise _refuse(path, f"its LlmMetadata section cannot be read ({exc})") from None
                info.max_num_tokens = meta.get("max_num_tokens") or None
                info.has_template = bool(meta.get("has_template"))
        return info


def _inspect_task(path: Path, size: int) -> BundleInfo:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _refuse(path, f"it looks like a .task zip archive but its directory cannot be read ({exc}); "
                            f"an interrupted download or copy?") from None
    if not names:
        raise _refuse(path, "it is an empty zip archive")
    return BundleInfo(path, "task", size, sections=[(n, 0, 0) for n in names])
