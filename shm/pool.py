"""Shared-memory frame pool (DESIGN §3): bounded, reusable slots in one anonymous memfd.

The main process creates the memfd and every child inherits the descriptor (Popen pass_fds), so
nothing ever appears in /dev/shm and nothing can leak: the kernel frees the memory when the last
process holding the descriptor exits, whatever signal killed the tree.

The facade is the only writer: `SlotAllocator` copies a frame into a free slot once and returns a
`SlotRef` (slot, generation, nbytes). A worker maps the same memory read-only (`SlotReader`) and gets a
zero-copy view. Each slot carries a generation counter in a control page; a release bumps it, so a
reference kept past its release is detected as stale instead of silently reading a newer frame.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
from dataclasses import dataclass
from typing import Optional

CTRL_ENTRY = 8  # one little-endian uint64 generation per slot
PAGE = 4096


class StaleSlotError(RuntimeError):
    pass


@dataclass(frozen=True)
class SlotRef:
    slot: int
    generation: int
    nbytes: int

    def to_wire(self) -> list:
        return [self.slot, self.generation, self.nbytes]

    @staticmethod
    def from_wire(value) -> "SlotRef":
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value)):
            raise ValueError(f"malformed shm reference {value!r}")
        return SlotRef(int(value[0]), int(value[1]), int(value[2]))


def _layout(slots: int, slot_size: int) -> tuple[int, int]:
    ctrl = ((slots * CTRL_ENTRY + PAGE - 1) // PAGE) * PAGE
    return ctrl, ctrl + slots * slot_size


def create_pool_fd(slots: int, slot_size: int) -> int:
    """Create the anonymous memory (in the main process); returns an fd to pass to children."""
    if slots <= 0 or slot_size <= 0:
        raise ValueError("shared-memory pool needs at least one slot of positive size")
    _, total = _layout(slots, slot_size)
    fd = os.memfd_create("pythonml-frames", os.MFD_CLOEXEC)
    os.ftruncate(fd, total)
    return fd


class _Mapping:
    def __init__(self, fd: int, slots: int, slot_size: int, writable: bool):
        self.slots, self.slot_size = slots, slot_size
        self.ctrl_size, total = _layout(slots, slot_size)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self.mm = mmap.mmap(fd, total, mmap.MAP_SHARED, prot)
        self.view = memoryview(self.mm)

    def generation(self, slot: int) -> int:
        return struct.unpack_from("<Q", self.mm, slot * CTRL_ENTRY)[0]

    def data_offset(self, slot: int) -> int:
        return self.ctrl_size + slot * self.slot_size

    def close(self) -> None:
        try:
            self.view.release()
            self.mm.close()
        except (BufferError, ValueError):
            pass  # a caller still holds a view; the mapping goes with the process


class SlotAllocator(_Mapping):
    """Writer side (facade). Thread-safe."""

    def __init__(self, fd: int, slots: int, slot_size: int):
        super().__init__(fd, slots, slot_size, writable=True)
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()
        self.in_use: dict[int, SlotRef] = {}
        self.copies = 0
        self.fallbacks = 0  # frames sent inline because none fit or none was free

    def free_count(self) -> int:
        return len(self._free)

    def put(self, data) -> Optional[SlotRef]:
        """Copy `data` (bytes-like) into a free slot; None when it does not fit or no slot is free."""
        n = len(data)
        if n > self.slot_size:
            self.fallbacks += 1
            return None
        with self._lock:
            if not self._free:
                self.fallbacks += 1
                return None
            slot = self._free.pop()
            gen = self.generation(slot) + 1
            struct.pack_into("<Q", self.mm, slot * CTRL_ENTRY, gen)
            ref = SlotRef(slot, gen, n)
            self.in_use[slot] = ref
        off = self.data_offset(slot)
        self.view[off:off + n] = data
        self.copies += 1
        return ref

    def release(self, ref: SlotRef) -> bool:
        """Return a slot; bumps its generation so stale readers notice. False if already released."""
        with self._lock:
            if self.in_use.get(ref.slot) != ref:
                return False
            del self.in_use[ref.slot]
            struct.pack_into("<Q", self.mm, ref.slot * CTRL_ENTRY, ref.generation + 1)
            self._free.append(ref.slot)
            return True

    def read(self, ref: SlotRef) -> bytes:
        off = self.data_offset(ref.slot)
        return bytes(self.view[off:off + ref.nbytes])


class SlotReader(_Mapping):
    """Reader side (worker): read-only zero-copy views."""

    def __init__(self, fd: int, slots: int, slot_size: int):
        super().__init__(fd, slots, slot_size, writable=False)

    def view_of(self, ref: SlotRef) -> memoryview:
        if not (0 <= ref.slot < self.slots) or not (0 <= ref.nbytes <= self.slot_size):
            raise ValueError(f"shm reference out of range: {ref}")
        self.check(ref)
        off = self.data_offset(ref.slot)
        return self.view[off:off + ref.nbytes]

    def check(self, ref: SlotRef) -> None:
        current = self.generation(ref.slot)
        if current != ref.generation:
            raise StaleSlotError(f"stale shm slot {ref.slot}: generation {ref.generation}, now {current}")
