"""A z-score outlier detector over a sliding window, llm.c's llmc/outlier_detector.h.

`update(x)` pushes x and returns its z-score against the window that now holds it (population mean and
standard deviation), or NaN while the window is still filling. The loop skips an update whose loss or
grad-norm z-score exceeds -sl / -sg. Sums are kept in Python floats (double), as llm.c.
"""

import math

WINDOW_SIZE = 128


class OutlierDetector:
    def __init__(self, window=WINDOW_SIZE):
        self.window = window
        self.buffer = [0.0] * window
        self.count = 0
        self.index = 0
        self.sum = 0.0
        self.sum_sq = 0.0

    def update(self, value):
        value = float(value)
        if self.count < self.window:  # still building up the window
            self.buffer[self.count] = value
            self.sum += value
            self.sum_sq += value * value
            self.count += 1
            return math.nan
        old = self.buffer[self.index]  # pop the oldest, push the new
        self.sum += value - old
        self.sum_sq += value * value - old * old
        self.buffer[self.index] = value
        self.index = (self.index + 1) % self.window
        mean = self.sum / self.window
        variance = self.sum_sq / self.window - mean * mean
        std = math.sqrt(max(variance, 0.0))
        if std == 0.0:
            return 0.0
        return (value - mean) / std

    def state_dict(self):
        return {"window": self.window, "buffer": list(self.buffer), "count": self.count, "index": self.index,
                "sum": self.sum, "sum_sq": self.sum_sq}

    def load_state_dict(self, state):
        self.window = int(state["window"])
        self.buffer = [float(x) for x in state["buffer"]]
        self.count, self.index = int(state["count"]), int(state["index"])
        self.sum, self.sum_sq = float(state["sum"]), float(state["sum_sq"])
