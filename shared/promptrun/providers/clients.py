"""SDK clients kept across warm invocations: one per endpoint and key, a few at most."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable


class ClientCache[T]:
    """Thread-safe, least recently used first out. Keys are hashed, never kept in clear."""

    def __init__(self, make: Callable[[str | None, str], T], size: int = 16) -> None:
        self._make = make
        self._size = size
        self._clients: OrderedDict[tuple[str | None, str], T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, base_url: str | None, api_key: str) -> T:
        cache_key = (base_url, hashlib.sha256(api_key.encode()).hexdigest())
        with self._lock:
            client = self._clients.get(cache_key)
            if client is None:
                client = self._make(base_url, api_key)
                self._clients[cache_key] = client
                while len(self._clients) > self._size:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(cache_key)
            return client
