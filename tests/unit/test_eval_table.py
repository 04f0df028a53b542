"""The eval summary printed where nobody has a wide terminal (a pipe, a CI log, a cron mail): every model
name, header and value whole, no line wider than the width."""

import io
import re

import pytest

from llmdistill.evaluate.stage import print_table


def token_metrics(kl, top1, ppl, ece=0.05):
    return {"kl_to_teacher": kl, "jsd_to_teacher": kl / 4, "top1_agreement": top1, "topk_overlap": top1 - 0.1,
            "perplexity": ppl, "ece": ece}


def task(accuracy):
    return {"accuracy": accuracy, "correct": int(accuracy * 40), "total": 40, "grader": "contains"}


METRICS = {
    "eval_prompts": 24, "eval_tokens": 1893, "topk": 10,
    "models": {
        "teacher": {"kl_to_teacher": 0.0, "jsd_to_teacher": 0.0, "top1_agreement": 1.0, "topk_overlap": 1.0,
                    "perplexity": 1.93, "parameters": 134_515_008, "latency_ms_per_token": 48.27,
                    "tasks": {"facts": task(0.9), "capital-cities": task(0.85)}},
        "student": {**token_metrics(0.4123, 0.712, 3.41), "parameters": 67_278_912, "latency_ms_per_token": 21.5,
                    "tasks": {"facts": task(0.625), "capital-cities": task(0.5)}},
        "sft_baseline": {**token_metrics(0.6012, 0.655, 3.97), "parameters": 67_278_912,
                         "latency_ms_per_token": 21.2, "tasks": {"facts": task(0.55)}},
        "promoted": {**token_metrics(0.4567, 0.70, 3.50), "parameters": 67_278_912, "latency_ms_per_token": None},
    },
}
HEADERS = ["params (M)", "KL to teacher", "JSD", "top-1 agreement", "top-10 overlap", "perplexity", "ECE",
           "ms / token", "facts", "capital-cities"]


def printed(monkeypatch, capsys, columns: int) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    print_table(METRICS)
    captured = capsys.readouterr()
    return (captured.err + captured.out).splitlines()


def assert_whole(lines: list[str], width: int) -> None:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]  # rich's colours take no columns
    text = "\n".join(lines)
    assert "…" not in text and "..." not in text
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    for word in ["teacher", "student", "sft_baseline", "promoted", *HEADERS, "0.4123", "0.6012", "0.625", "134.5"]:
        assert word in text, word
    assert " ".join(text.split()).startswith("eval: 24 held-out prompts, 1893 teacher tokens")  # wrapped if need be


def test_at_80_columns_in_a_log_nothing_is_cut(monkeypatch, capsys):
    lines = printed(monkeypatch, capsys, 80)
    assert_whole(lines, 80)
    # one column per model: the header row names them all, each metric is one row
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", "teacher", "student", "sft_baseline", "promoted"]
    assert next(line for line in lines if line.startswith("KL to teacher")).split()[-4:] == \
        ["0.0000", "0.4123", "0.6012", "0.4567"]


def test_a_wide_log_gets_one_line_per_model(monkeypatch, capsys):
    lines = printed(monkeypatch, capsys, 200)
    assert_whole(lines, 200)
    student = next(line for line in lines if line.startswith("student"))
    assert student.split() == ["student", "67.3", "0.4123", "0.1031", "0.712", "0.612", "3.41", "0.050", "21.5",
                               "0.500", "0.625"]


def test_a_very_narrow_log_gets_one_block_per_model(monkeypatch, capsys):
    lines = printed(monkeypatch, capsys, 40)
    assert_whole(lines, 40)
    i = lines.index("sft_baseline")
    assert lines[i + 1].split() == ["params", "(M)", "67.3"] and lines[i + 2].split() == ["KL", "to", "teacher",
                                                                                            "0.6012"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("columns, rich", [(200, True), (80, False)])
def test_a_terminal_gets_the_rich_table_only_where_it_fits(monkeypatch, columns, rich):
    monkeypatch.setenv("COLUMNS", str(columns))
    out = Terminal()
    print_table(METRICS, out)
    lines = out.getvalue().splitlines()
    assert any("┃" in line for line in lines) == rich
    assert_whole(lines, columns)


def test_layouts_of_the_summary_rows():
    from llmdistill.evaluate.stage import plain_layout, summary

    _, headers, rows = summary(METRICS)
    assert [r[0] for r in rows] == ["teacher", "student", "sft_baseline", "promoted"]
    assert rows[0][7] == "-" and rows[3][8] == "-" and rows[2][-2] == "-"  # no ECE, no latency, no such task
    for width in (10, 40, 80, 120, 300):
        lines = plain_layout(headers, rows, width)
        assert all(len(line) <= max(width, 40) for line in lines)
