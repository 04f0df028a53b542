"""The HTML run report: every plot and table present, images that decode, in pure Python and in headless
Chromium (Debian's `chromium` package; that test is skipped where it is not installed)."""

import base64
import os
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest

from conftest import PYTHON
from llmdistill import store
from llmdistill.report import PLOTS, TABLES, collect, loss_series, plot_loss, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Elements(HTMLParser):
    """Ids of <img> and <table> elements, the images' src, and 'not available' notes."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self.missing, self.decoded = {}, set(), [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images[a.get("id")] = a.get("src", "")
            if "data-decoded" in a:
                self.decoded[a.get("id")] = int(a["data-decoded"])
        elif tag == "table":
            self.tables.add(a.get("id"))
        elif tag == "p" and a.get("class") == "missing":
            self.missing.append(a.get("id"))


def parse(text: str) -> Elements:
    p = Elements()
    p.feed(text)
    return p


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture()
def reported_run(tiny_run):
    """A finished tiny run through the CLI: `llmdistill run` ends by writing the report (conftest.tiny_run)."""
    return tiny_run


def test_report_has_every_plot_and_table_with_images_that_decode(reported_run):
    page = parse((reported_run / "report" / "index.html").read_text(encoding="utf-8"))
    assert set(PLOTS) <= set(page.images), page.missing
    assert set(TABLES) <= page.tables
    assert not page.missing
    for plot_id in PLOTS:
        src = page.images[plot_id]
        assert src.startswith("data:image/png;base64,")
        width, height = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert width > 100 and height > 100
    metrics = store.read_json(reported_run / "report" / "metrics.json")
    assert set(metrics["eval"]["models"]) == {"teacher", "student", "sft_baseline"}
    assert metrics["filter"]["input_rows"] == 12 and metrics["train"]["student"]["steps"] == 4


def test_loss_plot_compares_ce_on_the_teacher_tokens_not_the_objectives(reported_run):
    """The KD student's total loss (0.9 KL + 0.1 CE) and the SFT baseline's (CE) are different objectives:
    the plot puts both students' CE side by side and the KD terms in their own panel."""
    histories = collect(reported_run)["histories"]
    series = loss_series(histories)
    assert set(series["ce"]) == {"student", "sft_baseline"}
    for name, history in histories.items():
        logged = [h for h in history if "loss" in h]
        assert series["ce"][name]["train"] == [(h["step"], h["loss_ce"]) for h in logged]
        assert len(logged) == 4 and all(h["loss_ce"] > 0 for h in logged)
    kd = [h for h in histories["student"] if "loss" in h]
    assert all(abs(h["loss"] - h["loss_ce"]) > 0.1 for h in kd)  # the objective is not the CE
    assert series["terms"] == {"student": {"forward_kl": [(h["step"], h["loss_forward_kl"]) for h in kd]}}
    assert png_size(plot_loss(histories))[0] > 500  # two panels


def test_loss_series_of_every_kind_of_history():
    kd_without_ce_term = [{"step": 1, "loss": 0.4, "loss_forward_kl": 0.1, "loss_ce": 5.0},
                          {"step": 1, "eval_loss": 0.5, "eval_loss_forward_kl": 0.12, "eval_loss_ce": 5.1},
                          {"step": 2, "loss": 0.3, "loss_forward_kl": 0.07, "loss_ce": 4.0},
                          {"step": 2, "train_loss": 0.35, "train_runtime": 1.0}]
    sft = [{"step": 1, "loss": 5.2, "loss_ce": 5.2}, {"step": 2, "loss": 4.5, "loss_ce": 4.5}]
    on_policy = [{"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.8}]  # trl logs its objective only
    series = loss_series({"student": kd_without_ce_term, "sft_baseline": sft, "op": on_policy})
    assert series["ce"] == {"student": {"train": [(1, 5.0), (2, 4.0)], "held_out": [(1, 5.1)]},
                            "sft_baseline": {"train": [(1, 5.2), (2, 4.5)], "held_out": []}}
    assert series["terms"] == {"student": {"forward_kl": [(1, 0.1), (2, 0.07)]},
                               "op": {"objective": [(1, 0.9), (2, 0.8)]}}
    assert loss_series(None) == {"ce": {}, "terms": {}} and plot_loss({"x": [{"step": 1}]}) is None


def test_report_shows_missing_pieces_as_not_available(reported_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(reported_run / "filter", partial / "filter", ignore=shutil.ignore_patterns("*.parquet"))
    page = parse(write_report(partial).read_text(encoding="utf-8"))
    assert "plot-funnel" in page.images and "table-funnel" in page.tables
    assert {"plot-loss-missing", "table-summary-missing", "plot-kl-histogram-missing"} <= set(page.missing)
    empty = parse(write_report(tmp_path / "empty").read_text(encoding="utf-8"))
    assert not empty.images and "table-run" in empty.tables


def test_report_command(reported_run, tmp_path):
    (reported_run / "report" / "index.html").unlink()
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "report", str(reported_run)], capture_output=True, text=True)
    assert res.returncode == 0 and (reported_run / "report" / "index.html").exists()
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "report", str(tmp_path / "nope")], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "not a run directory" in res.stderr


def test_report_on_a_full_disk_is_one_line_and_keeps_the_old_page(reported_run, monkeypatch):
    import errno
    import os

    from typer.testing import CliRunner

    from llmdistill import cli

    page = reported_run / "report" / "index.html"
    old = page.read_bytes()

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    res = CliRunner().invoke(cli.app, ["report", str(reported_run)])
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert errors == [f"llmdistill: error: cannot write {page}: [ENOSPC] No space left on device"]
    assert page.read_bytes() == old


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(reported_run, tmp_path):
    if CHROMIUM is None:
        # scripts/test.sh installs Debian's chromium where it can (root, apt-get) and then expects it
        assert os.environ.get("LLMDISTILL_EXPECT_CHROMIUM") != "1", \
            "scripts/setup_chromium.sh should have installed chromium on this machine"
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    url = (reported_run / "report" / "index.html").resolve().as_uri()
    dom = _chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parse(dom.stdout)
    assert set(TABLES) <= page.tables
    # the page's own script marks every image the browser decoded with its pixel width
    assert set(PLOTS) <= set(page.decoded) and all(w > 100 for w in page.decoded.values()), page.decoded
    shot = tmp_path / "report.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1280,4000", url)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    data = shot.read_bytes()
    assert png_size(data) == (1280, 4000) and len(data) > 50_000  # a blank page compresses to a few KB
