"""Audio payloads -> float32 mono samples at the model's rate, with precise INVALID_ARGUMENT errors.

Accepted: a RIFF/WAVE file (PCM 8/16/24/32-bit, IEEE float 32/64-bit, WAVE_FORMAT_EXTENSIBLE;
any rate, any channel count), or raw PCM (`pcm_s16le`, `pcm_f32le`) with an explicit sample rate.
Images and other non-audio bytes are recognised and refused with a message that says what arrived.
The duration limit (`max_seconds`, workers/hf/limits.AUDIO_MAX_SECONDS by default in the worker) is checked
from the header and the byte count, before any sample is converted or resampled.

Shared by the hf worker (decoding requests, writing TTS output) and the client CLI (reading and writing
wav files), so it imports nothing above common/.
"""
from __future__ import annotations

import struct
from typing import Optional

import numpy as np

from common.status import StatusError as WorkerError

TARGET_RATE = 16000
MIN_RATE, MAX_RATE = 8000, 192000
PCM_ENCODINGS = {"pcm_s16le": np.dtype("<i2"), "s16le": np.dtype("<i2"), "pcm16": np.dtype("<i2"),
                 "pcm_f32le": np.dtype("<f4"), "f32le": np.dtype("<f4"), "float32": np.dtype("<f4")}

_MAGIC = [(b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"BM", "a BMP image"), (b"%PDF", "a PDF document"), (b"OggS", "an Ogg container"),
          (b"fLaC", "a FLAC file"), (b"ID3", "an MP3 file"), (b"\x1aE\xdf\xa3", "a Matroska/WebM file"),
          (b"PK\x03\x04", "a ZIP archive")]


def sniff(data: bytes) -> Optional[str]:
    """What a non-WAV payload looks like, for error messages (None if unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WEBP image"
    if data[4:8] == b"ftyp":
        return "an MP4/M4A file"
    for magic, what in _MAGIC:
        if data.startswith(magic):
            return what
    return None


def _check_rate(rate: int, where: str) -> None:
    if rate <= 0:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: sample_rate is {rate}; raw PCM needs its sample rate in Hz "
                                              f"(for example 16000)")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: sample_rate {rate} Hz is outside the supported "
                                              f"{MIN_RATE}..{MAX_RATE} Hz")


def _check_duration(frames: int, rate: int, max_seconds: float, where: str) -> None:
    seconds = frames / rate
    if max_seconds and seconds > max_seconds:
        raise WorkerError("INVALID_ARGUMENT", f"{where} is {seconds:.0f} s long; the limit is {max_seconds:.0f} s "
                                              "(worker option max_audio_s): split the audio or use StreamTranscribe")


def parse_wav(data: bytes, where: str = "audio", max_seconds: float = 0.0) -> tuple[np.ndarray, int]:
    """RIFF/WAVE bytes -> (float32 array [frames, channels], sample_rate)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WorkerError("INVALID_ARGUMENT", f"{where}: not a RIFF/WAVE file")
    pos, fmt, body = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunk = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            if len(chunk) < 16:
                raise WorkerError("INVALID_ARGUMENT", f"{where}: WAV 'fmt ' chunk is {len(chunk)} bytes (truncated)")
            fmt = struct.unpack("<HHIIHH", chunk[:16]) + ((struct.unpack("<H", chunk[24:26])[0],)
                                                          if len(chunk) >= 26 else (None,))
        elif cid == b"data":
            body = chunk   # a truncated data chunk (streamed writer) is read as far as it goes
            break
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: WAV file has no 'fmt ' chunk")
    if body is None:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: WAV file has no 'data' chunk")
    tag, channels, rate, _, align, bits, sub = fmt
    if tag == 0xFFFE and sub is not None:
        tag = sub
    _check_rate(rate, f"{where} (WAV header)")
    if channels < 1 or channels > 64:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: WAV header says {channels} channels")
    width = bits // 8
    if width:
        _check_duration(len(body) // (width * channels), rate, max_seconds, where)
    if tag == 1 and bits in (8, 16, 24, 32):
        n = len(body) // (width * channels) * width * channels
        raw = np.frombuffer(body[:n], dtype=np.uint8)
        if bits == 8:
            x = (raw.astype(np.float32) - 128.0) / 128.0
        elif bits == 16:
            x = raw.view("<i2").astype(np.float32) / 32768.0
        elif bits == 24:
            b = raw.reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            v = np.where(v & 0x800000, v - (1 << 24), v)
            x = v.astype(np.float32) / 8388608.0
        else:
            x = raw.view("<i4").astype(np.float32) / 2147483648.0
    elif tag == 3 and bits in (32, 64):
        n = len(body) // (width * channels) * width * channels
        x = np.frombuffer(body[:n], dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: WAV format tag {tag} with {bits} bits is not supported "
                                              "(use PCM 8/16/24/32-bit or IEEE float)")
    return x.reshape(-1, channels), rate


def parse_pcm(data: bytes, encoding: str, rate: int, channels: int = 1, where: str = "audio",
              max_seconds: float = 0.0) -> tuple[np.ndarray, int]:
    dt = PCM_ENCODINGS.get(encoding)
    if dt is None:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: encoding '{encoding}' is not supported; use wav, pcm_s16le "
                                              "or pcm_f32le")
    _check_rate(rate, where)
    channels = channels or 1
    if channels < 1 or channels > 64:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: channels is {channels}")
    frame = dt.itemsize * channels
    if len(data) % frame:
        raise WorkerError("INVALID_ARGUMENT", f"{where}: {len(data)} bytes of {encoding} is not a whole number of "
                                              f"{frame}-byte frames ({channels} channel(s) x {dt.itemsize} bytes)")
    _check_duration(len(data) // frame, rate, max_seconds, where)
    x = np.frombuffer(data, dtype=dt)
    x = x.astype(np.float32) / 32768.0 if dt.kind == "i" else x.astype(np.float32)
    return x.reshape(-1, channels), rate


def resample(x: np.ndarray, rate: int, target: int = TARGET_RATE) -> np.ndarray:
    if rate == target or x.size == 0:
        return np.ascontiguousarray(x, dtype=np.float32)
    from math import gcd
    from scipy.signal import resample_poly
    g = gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def decode(data, encoding: str = "", sample_rate: int = 0, channels: int = 0, where: str = "audio",
           target_rate: int = TARGET_RATE, max_seconds: float = 0.0, allow_empty: bool = False) -> np.ndarray:
    """Bytes -> float32 mono at target_rate. Raises WorkerError(INVALID_ARGUMENT) with what is wrong."""
    data = bytes(data) if data is not None else b""
    enc = (encoding or "").strip().lower()
    if not data:
        if allow_empty:
            return np.zeros(0, dtype=np.float32)
        raise WorkerError("INVALID_ARGUMENT", f"{where} is empty: send WAV bytes or raw PCM samples")
    if enc in ("", "wav", "auto", "riff"):
        if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            what = sniff(data)
            if what:
                raise WorkerError("INVALID_ARGUMENT", f"{where}: got {what} ({len(data)} bytes) where audio was "
                                                      "expected; send a WAV file or raw PCM (encoding=pcm_s16le|pcm_f32le "
                                                      "with sample_rate)")
            raise WorkerError("INVALID_ARGUMENT", f"{where}: {len(data)} bytes are not a WAV file (they start with "
                                                  f"{data[:8]!r}); for raw PCM set encoding=pcm_s16le or pcm_f32le and "
                                                  "sample_rate")
        x, rate = parse_wav(data, where, max_seconds)
        if sample_rate and sample_rate != rate:
            raise WorkerError("INVALID_ARGUMENT", f"{where}: sample_rate {sample_rate} Hz does not match the WAV "
                                                  f"header's {rate} Hz (leave sample_rate 0 for WAV files)")
    else:
        x, rate = parse_pcm(data, enc, sample_rate, channels, where, max_seconds)
    if x.shape[0] == 0:
        if allow_empty:
            return np.zeros(0, dtype=np.float32)
        raise WorkerError("INVALID_ARGUMENT", f"{where} holds no samples (empty data chunk)")
    if not np.isfinite(x).all():
        raise WorkerError("INVALID_ARGUMENT", f"{where}: samples contain NaN or infinity")
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return resample(mono, rate, target_rate)


def to_wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """float32 mono -> 16-bit PCM WAV bytes (for clients and tests)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", len(pcm)) + pcm)
