"""main.log in llm.c's line format, and what the console shows.

main.log (llm.c's llmc/logger.h, read by llm.c's dev/vislog.ipynb and `llmpy plot`):
    s:%d trl:%.4f lr:%.6f norm:%.2f    train loss of step s (0-based), its lr and grad norm
    s:%d tel:%.4f                      val loss before step s
    s:%d eval:%.4f                     HellaSwag acc_norm before step s
On resume the lines of steps >= the resumed step (and a line torn by a crash) are dropped first, so the
log reads as one run. Nothing else goes into main.log (llm.c's notebook parses every line): warnings go
to the console. A write that fails (a full disk) is an LlmpyError saying which checkpoint is intact.

Console: rank 0's progress, a tqdm bar or llm.c-style lines (one per step: what `> log` should hold), or
nothing. `--progress auto` draws a bar only on a real terminal outside an MPI launcher: Open MPI gives its
ranks a pseudo-terminal even when mpirun's own output goes to a file, so under a launcher (the loop passes
under_mpi from llmpy.dist.launched_by_mpi: the launcher's environment variables) a rank cannot tell, and
writes lines; `--progress bar` forces a bar. Every message of a run goes through `Console.print` so it
never lands in the middle of the bar.
"""

import math
import re
import sys
from pathlib import Path

from llmpy.errors import LlmpyError
from llmpy.fileio import atomic_write

LOG_NAME = "main.log"
LINE_RE = re.compile(r"^s:(\d+) (trl|tel|eval):([-+0-9.eEnaif]+)")


def read_log_text(path):
    """The text of a main.log; LlmpyError when it is not one (not UTF-8: another file, or damaged)."""
    data = Path(path).read_bytes()
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise LlmpyError(f"{path} is not a training log (a byte that is not UTF-8 text at offset {e.start}): move it "
                         f"away (a run's checkpoints do not need it) and run again") from None


def parse_log(path):
    """{'trl': [(step, value)], 'tel': [...], 'eval': [...]} from a main.log (llm.c's format)."""
    out = {"trl": [], "tel": [], "eval": []}
    for line in read_log_text(path).splitlines():
        m = LINE_RE.match(line)
        if m:
            out[m.group(2)].append((int(m.group(1)), float(m.group(3))))
    return out


class Logger:
    """Appends llm.c's lines to OUT/main.log; a no-op when out_dir is None (non-master ranks).

    on_disk_error(path, OSError) -> exception: what a failed write raises (the loop's says which checkpoint
    is intact); by default an LlmpyError naming the file."""

    def __init__(self, out_dir, resume_step=None, on_disk_error=None):
        self.path = None if out_dir is None else Path(out_dir) / LOG_NAME
        self.on_disk_error = on_disk_error or (lambda path, e: LlmpyError(f"could not write {path}: {e}"))
        if self.path is None:
            return
        kept = ""
        if resume_step is not None and self.path.exists():
            lines = read_log_text(self.path).splitlines(keepends=True)
            if lines and not lines[-1].endswith("\n"):
                lines.pop()   # torn by a crash (or a full disk) mid-line
            kept = "".join(line for line in lines
                           if (m := LINE_RE.match(line)) is None or int(m.group(1)) < resume_step)
        try:
            atomic_write(self.path, [kept.encode()])   # the old log stays whole if this fails
        except OSError as e:
            raise self.on_disk_error(self.path, e) from e

    def _write(self, line):
        if self.path is None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            raise self.on_disk_error(self.path, e) from e

    def log_train(self, step, loss, lr, norm):
        self._write(f"s:{step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}")

    def log_val(self, step, loss):
        self._write(f"s:{step} tel:{loss:.4f}")

    def log_eval(self, step, acc):
        self._write(f"s:{step} eval:{acc:.4f}")


def progress_mode(mode, stream, under_mpi=False):
    """'bar', 'lines' or 'none' for --progress `mode`: auto is a bar on a terminal outside an MPI launcher."""
    if mode != "auto":
        return mode
    return "bar" if stream.isatty() and not under_mpi else "lines"


class Console:
    """Step lines or a progress bar, for rank 0 (quiet=True elsewhere). `warn` reaches the user even with
    --progress none (on stderr then)."""

    def __init__(self, mode, total, first_step=0, quiet=False, stream=None, under_mpi=False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.mode = "none" if quiet else progress_mode(mode, self.stream, under_mpi)
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

    def warn(self, text):
        if self.quiet:
            return
        if self.mode == "none":
            print(text, file=sys.stderr, flush=True)
        else:
            self.print(text)

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
