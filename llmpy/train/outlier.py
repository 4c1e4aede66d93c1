"""Which training updates to skip: llm.c's z-score outlier detector (llmc/outlier_detector.h), and the
one place that decides "is this update an outlier".

`OutlierDetector.update(x)` pushes x and returns its z-score against the window that now holds it
(population mean and standard deviation), or NaN while the window is still filling. Sums are kept in
Python floats (double), as llm.c.

`UpdateGuard.check(loss, norm)` decides each step: an update is skipped when the loss or the grad norm is
not finite (always, whatever the windows hold: NaN and inf never enter them, they would poison the mean and
std), or when a z-score exceeds -sl / -sg. After -sk updates skipped in a row the run has diverged and
`check` says so. A finite loss far above that of guessing uniformly (2 ln V) is "exploding": the update
is applied, but the loop warns. A checkpoint written after a step with a non-finite loss or norm, or an
exploding loss, is marked unhealthy, and pruning keeps the newest healthy one.

Not handled: NaN inside the parameters themselves (the loop checks them before writing a checkpoint).
"""

import math

WINDOW_SIZE = 128
EXPLODING_FACTOR = 2.0   # a loss above this many times ln(V) (uniform guessing) is exploding


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
        assert math.isfinite(value), "non-finite values must not enter the window (UpdateGuard filters them)"
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
        """Restore a state_dict(); ValueError (saying which field) when it cannot be one."""
        try:
            window, count, index = (_as_int(state[k]) for k in ("window", "count", "index"))
            buffer = [float(x) for x in state["buffer"]]
            total, total_sq = float(state["sum"]), float(state["sum_sq"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"outlier detector state is damaged ({type(e).__name__}: {e})") from None
        if window < 1 or len(buffer) != window or not 0 <= count <= window or not 0 <= index < window:
            raise ValueError(f"outlier detector state is impossible: window {window}, {len(buffer)} values, "
                             f"count {count}, index {index}")
        if not all(math.isfinite(x) for x in buffer + [total, total_sq]) or total_sq < 0.0:
            raise ValueError("outlier detector state holds non-finite values (or a negative sum of squares)")
        self.window, self.buffer, self.count, self.index = window, buffer, count, index
        self.sum, self.sum_sq = total, total_sq


def _as_int(x):
    if isinstance(x, bool) or not float(x).is_integer():
        raise ValueError(f"{x!r} is not an integer")
    return int(x)


class UpdateGuard:
    """Skip or apply each step's update, count skips in a row, and tell a diverged run.

        guard = UpdateGuard(lossz=cfg.skip_update_lossz, gradz=cfg.skip_update_gradz, max_skipped=10, vocab_size=V)
        reason = guard.check(loss, norm)   # "" to apply the update, else why it is skipped
        if guard.diverged: ...             # max_skipped updates in a row were skipped (0: never)
    """

    def __init__(self, lossz=0.0, gradz=0.0, max_skipped=10, vocab_size=None, window=WINDOW_SIZE):
        self.lossz, self.gradz, self.max_skipped = lossz, gradz, max_skipped
        self.exploding_above = EXPLODING_FACTOR * math.log(vocab_size) if vocab_size else math.inf
        self.loss_detector, self.norm_detector = OutlierDetector(window), OutlierDetector(window)
        self.skipped_in_row = 0
        self.zloss = self.zgrad = math.nan   # z-scores of the last check (NaN: window filling, or not finite)
        self.last_loss = self.last_norm = math.nan

    def check(self, loss, norm):
        """'' when the update of a step with this loss and grad norm is applied, else the reason it is skipped."""
        self.last_loss, self.last_norm = loss, norm
        self.zloss = self.loss_detector.update(loss) if math.isfinite(loss) else math.nan
        self.zgrad = self.norm_detector.update(norm) if math.isfinite(norm) else math.nan
        if not math.isfinite(loss):
            reason = f"the loss is {loss}"
        elif not math.isfinite(norm):
            reason = f"the gradient norm is {norm}"
        elif self.lossz and self.zloss > self.lossz:   # NaN (window filling) compares False
            reason = f"loss z-score {self.zloss:.2f} > -sl {self.lossz}"
        elif self.gradz and self.zgrad > self.gradz:
            reason = f"grad norm z-score {self.zgrad:.2f} > -sg {self.gradz}"
        else:
            reason = ""
        self.skipped_in_row = self.skipped_in_row + 1 if reason else 0
        return reason

    @property
    def diverged(self):
        return self.max_skipped > 0 and self.skipped_in_row >= self.max_skipped

    def exploding(self, loss):
        """A finite loss far above uniform guessing's ln(V): the run is blowing up even if no update is skipped."""
        return math.isfinite(loss) and loss > self.exploding_above

    def healthy(self):
        """Whether the last step's loss and grad norm were finite and the loss not exploding: a checkpoint
        written now is one worth keeping."""
        return math.isfinite(self.last_loss) and math.isfinite(self.last_norm) and not self.exploding(self.last_loss)

    def state_dict(self):
        return {"loss_detector": self.loss_detector.state_dict(), "norm_detector": self.norm_detector.state_dict(),
                "skipped_in_row": self.skipped_in_row}

    def load_state_dict(self, state):
        self.loss_detector.load_state_dict(state["loss_detector"])
        self.norm_detector.load_state_dict(state["norm_detector"])
        skipped = _as_int(state.get("skipped_in_row", 0))   # absent in states written before -sk existed
        if skipped < 0:
            raise ValueError(f"skipped_in_row {skipped} is negative")
        self.skipped_in_row = skipped
