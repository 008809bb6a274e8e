"""Ids remembered for a while: an insertion-ordered map that forgets its oldest entries beyond a limit.

Used wherever a process must recall a bounded number of recent ids: CANCELs that overtook their REQUEST
(broker and worker), dead worker ids to fence (broker), streams closed lately (worker)."""
from __future__ import annotations

from collections import OrderedDict


class Recent(OrderedDict):
    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def remember(self, key, value=None) -> None:
        """Set `key` (a key already there keeps its place) and forget the oldest keys beyond the limit."""
        self[key] = value
        while len(self) > self.limit:
            self.popitem(last=False)
