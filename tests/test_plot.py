"""`llmpy plot`: a PNG from llm.c-format main.log files."""

import pytest

from llmpy.cli import main
from llmpy.train.log import Logger, parse_log

pytest.importorskip("matplotlib")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(tmp_path, name, evals=True):
    d = tmp_path / name
    d.mkdir()
    log = Logger(d)
    for s in range(20):
        if s % 5 == 0:
            log.log_val(s, 5.0 - s / 10)
            if evals:
                log.log_eval(s, 0.25 + s / 200)
        log.log_train(s, 5.5 - s / 10, 3e-4, 1.23)
    return d


def test_log_format_and_plot(tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", evals=False)
    lines = (a / "main.log").read_text().splitlines()
    assert lines[:3] == ["s:0 tel:5.0000", "s:0 eval:0.2500", "s:0 trl:5.5000 lr:0.000300 norm:1.23"]
    parsed = parse_log(a / "main.log")
    assert len(parsed["trl"]) == 20 and parsed["tel"][-1] == (15, 3.5) and parsed["eval"][1] == (5, 0.275)
    assert main(["plot", str(a), str(b), "-o", str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["plot", str(b)]) == 0
    assert (b / "loss.png").read_bytes()[:8] == PNG_MAGIC


def test_comparison_does_not_replace_a_runs_own_plot(tmp_path, monkeypatch, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    assert main(["plot", str(a)]) == 0
    own = (a / "loss.png").read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["plot", str(a), str(b)]) == 0
    assert (a / "loss.png").read_bytes() == own and not (b / "loss.png").exists()
    assert (work / "loss_a_vs_b.png").read_bytes()[:8] == PNG_MAGIC
    assert "loss_a_vs_b.png" in capsys.readouterr().out


def test_plot_missing_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "llmpy train -o DIR" in capsys.readouterr().err
