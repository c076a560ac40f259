"""A bounded mapping that evicts the least recently used entry, for the data plane's in-process caches.

Caches that are emptied wholesale when full forget everything at once (a busy worker's keys, or a limit's
memory of who was refused); evicting the coldest entry keeps the hot ones and bounds memory all the same.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    __slots__ = ("_items", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, default=None):
        """The value for ``key`` (now the most recently used), or ``default``."""
        try:
            self._items.move_to_end(key)
        except KeyError:
            return default
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        items = self._items
        items[key] = value
        items.move_to_end(key)
        if len(items) > self.maxsize:
            items.popitem(last=False)

    def pop(self, key: K, default=None):
        return self._items.pop(key, default)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
