"""Random inputs for calibration when no data is given (accuracy is then not measured)."""
from __future__ import annotations

from collections.abc import Iterator

from shipyard.feeds import random_feeds
from shipyard.model import Signature


class RandomSource:
    measured = False
    labels = None

    def __init__(self, count: int = 32, seed: int = 0):
        self.count = count
        self.seed = seed
        self.description = "random data"

    def feeds(self, signature: Signature) -> Iterator[dict]:
        for i in range(self.count):
            yield random_feeds(signature, self.seed + i, batch=1)
