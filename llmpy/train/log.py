"""main.log in llm.c's line format, and what the console shows.

main.log (llm.c's llmc/logger.h, read by llm.c's dev/vislog.ipynb and `llmpy plot`):
    s:%d trl:%.4f lr:%.6f norm:%.2f    train loss of step s (0-based), its lr and grad norm
    s:%d tel:%.4f                      val loss before step s
    s:%d eval:%.4f                     HellaSwag acc_norm before step s
On resume the lines of steps >= the resumed step are dropped first, so the log reads as one run.

Console: a tqdm bar on a terminal, llm.c-style lines otherwise (`--progress lines`), or nothing.
"""

import math
import re
import sys
from pathlib import Path

LOG_NAME = "main.log"
LINE_RE = re.compile(r"^s:(\d+) (trl|tel|eval):([-+0-9.eEnaif]+)")


def parse_log(path):
    """{'trl': [(step, value)], 'tel': [...], 'eval': [...]} from a main.log (llm.c's format)."""
    out = {"trl": [], "tel": [], "eval": []}
    with open(path) as f:
        for line in f:
            m = LINE_RE.match(line)
            if m:
                out[m.group(2)].append((int(m.group(1)), float(m.group(3))))
    return out


class Logger:
    """Appends llm.c's lines to OUT/main.log; a no-op when out_dir is None (non-master ranks)."""

    def __init__(self, out_dir, resume_step=None):
        self.path = None if out_dir is None else Path(out_dir) / LOG_NAME
        if self.path is None:
            return
        if resume_step is None or not self.path.exists():
            self.path.write_text("")
            return
        kept = [line for line in self.path.read_text().splitlines(keepends=True)
                if (m := LINE_RE.match(line)) is None or int(m.group(1)) < resume_step]
        self.path.write_text("".join(kept))

    def _write(self, line):
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def log_train(self, step, loss, lr, norm):
        self._write(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}")

    def log_val(self, step, loss):
        self._write(f"s:{step} tel:{loss:.4f}")

    def log_eval(self, step, acc):
        self._write(f"s:{step} eval:{acc:.4f}")


class Console:
    """Step lines or a progress bar, for rank 0 (quiet=True elsewhere)."""

    def __init__(self, mode, total, first_step=0, quiet=False, stream=None):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        self.mode = "none" if quiet else mode
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=first_step, unit="step", dynamic_ncols=True, file=self.stream)

    def print(self, text):
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def step(self, step, total, loss, zloss, norm, zgrad, lr, ms, tok_s, mfu, note=""):
        if self.mode == "none":
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f} norm {norm:.3f} lr {lr:.2e} {tok_s:,.0f} tok/s mfu {mfu:.0%}",
                                     refresh=False)
            self.bar.update(1)
            if note:
                self.bar.write(note, file=self.stream)
            return
        z = f" ({zloss:+.2f}z)" if not math.isnan(zloss) else ""  # NaN until the outlier window fills
        zg = f" ({zgrad:+.2f}z)" if not math.isnan(zgrad) else ""
        self.print(f"step {step + 1:4d}/{total} | loss {loss:.6f}{z} | norm {norm:.4f}{zg} | lr {lr:.2e} | "
                   f"{ms:.1f} ms | {tok_s:,.0f} tok/s | {mfu:.1%} of sgemm peak{note}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
