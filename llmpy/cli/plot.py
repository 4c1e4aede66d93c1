"""`llmpy plot OUT_DIR... [-o PNG]`: train/val loss (and HellaSwag) curves of one or more runs.

Reads each run's main.log (llm.c's format, so llm.c's own log directories work too) and draws one
panel of losses (train thin, val thick) and, when any run logged HellaSwag, a second panel of accuracy.
Needs matplotlib (pip install 'llmpy[plot]').
"""

from pathlib import Path

from llmpy.cli import check_output
from llmpy.errors import LlmpyError, import_optional
from llmpy.fileio import atomic_write_with
from llmpy.train.log import LOG_NAME, parse_log


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="OUT_DIR", help="run directories holding main.log (or log files)")
    parser.add_argument("-o", "--output", default=None,
                        help="PNG to write (default: OUT_DIR/loss.png for one run; for several, "
                             "loss_A_vs_B[...].png in the current directory: no run's own plot is replaced)")
    parser.add_argument("--title", default=None, help="title of the loss panel (default: loss)")


def _log_path(run):
    path = Path(run)
    path = path / LOG_NAME if path.is_dir() else path
    if not path.is_file():
        raise LlmpyError(f"{path} does not exist: give a run directory written by `llmpy train -o DIR`")
    return path


def plot_runs(runs, output, title=None):
    """Draw the curves of `runs` (directories or main.log files) into the PNG `output`; returns its path."""
    matplotlib = import_optional("matplotlib", "plotting", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = check_output(output)  # before the work: a read-only or missing place is an error, not a traceback
    logs = [(Path(r).name or str(r), parse_log(_log_path(r))) for r in runs]
    if not any(log["trl"] or log["tel"] for _, log in logs):
        raise LlmpyError(f"no train or val losses in {', '.join(str(r) for r in runs)}: is the run empty?")
    evals = any(log["eval"] for _, log in logs)
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    for i, (name, log) in enumerate(logs):
        color = f"C{i}"
        if log["trl"]:
            s, v = zip(*log["trl"])
            ax.plot(s, v, color=color, alpha=0.4, linewidth=1, label=f"{name} train")
        if log["tel"]:
            s, v = zip(*log["tel"])
            ax.plot(s, v, color=color, linewidth=2, marker="o", markersize=3, label=f"{name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "loss")
    if evals:
        ax = axes[0][1]
        for i, (name, log) in enumerate(logs):
            if log["eval"]:
                s, v = zip(*log["eval"])
                ax.plot(s, v, color=f"C{i}", marker="o", markersize=3, label=name)
        ax.axhline(0.25, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_xlabel("step")
        ax.set_ylabel("HellaSwag acc_norm")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(output, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return output


def default_output(runs):
    """A single run's own loss.png; a comparison goes to the current directory, named after the runs, so that
    `llmpy plot A B` does not overwrite the plot `llmpy train` wrote into A."""
    dirs = [_log_path(r).parent for r in runs]
    if len(dirs) == 1:
        return dirs[0] / "loss.png"
    names = [d.resolve().name or "run" for d in dirs]
    return Path("loss_" + "_vs_".join(names)[:200] + ".png")


def run(args):
    output = args.output or default_output(args.runs)
    path = plot_runs(args.runs, output, args.title)
    print(f"wrote {path}")
    return 0
