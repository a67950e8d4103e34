"""What a process keeps between verifications: built networks and the threads each runtime may use.

``verify`` builds TF-Slim's reference graph and the exact torch module for every checkpoint it
checks; in a batch (or any process that verifies many checkpoints) most of them share an
architecture and an input size. A built network is kept here under a key of everything its
structure depends on, and each checkpoint's weights are swapped into it (TensorFlow restores every
variable; torch loads a strict state dict), so no weight of an earlier checkpoint survives into a
later result and the result does not depend on the order of the checkpoints.

At most ``MAX_NETWORKS`` networks of each kind are kept; the least recently used one goes first.
"""

import collections

MAX_NETWORKS = 3

# threads each runtime may use in this process; None: the runtime's own default (every core)
_threads = None


def set_threads(count):
    """Let each runtime (TensorFlow, torch, onnxruntime) use ``count`` threads in this process.

    Each runtime reads it when it next runs (nothing is imported here); None restores their defaults.
    """
    global _threads
    _threads = max(1, int(count)) if count else None


def threads():
    """The threads each runtime may use here, or None for the runtime's default."""
    return _threads


class Cache:
    """Built things by key, at most ``size`` of them; ``close(value)`` is called on each one dropped."""

    def __init__(self, size=MAX_NETWORKS, close=None):
        self.size = size
        self.close = close
        self._items = collections.OrderedDict()

    def get(self, key, make):
        """The value kept under ``key``, made by ``make()`` when there is none (a failed make keeps nothing)."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        while len(self._items) > self.size:
            _, dropped = self._items.popitem(last=False)
            if self.close is not None:
                self.close(dropped)
        return value

    def clear(self):
        while self._items:
            _, dropped = self._items.popitem(last=False)
            if self.close is not None:
                self.close(dropped)

    def __len__(self):
        return len(self._items)


_caches = []


def cache(close=None):
    """A new ``Cache`` that ``clear()`` empties too."""
    made = Cache(close=close)
    _caches.append(made)
    return made


def clear():
    """Drop every network kept in this process (the next verification builds afresh)."""
    for kept in _caches:
        kept.clear()
