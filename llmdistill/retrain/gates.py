"""Promotion gates: is the new student not worse than the promoted one by more than a margin?

For a metric where higher is better (agreement, overlap, task accuracy) the regression is
promoted - new; where lower is better (KL, JSD, perplexity, ECE) it is new - promoted. A gate passes
when regression <= max_regression. With no promoted student yet, every gate passes.
"""

from __future__ import annotations

import math

from llmdistill.config import GateConfig


def metric_value(model_metrics: dict, metric: str) -> float | None:
    """A gate metric from one model's eval metrics (eval/metrics.json models[name]); None if absent."""
    if metric.startswith("task:"):
        task = model_metrics.get("tasks", {}).get(metric[5:])
        return None if task is None else float(task["accuracy"])
    value = model_metrics.get(metric)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def check(gates: list[GateConfig], new: dict, promoted: dict | None) -> list[dict]:
    """One verdict per gate: metric, new and promoted values, regression, allowed margin, passed, why."""
    out = []
    for gate in gates:
        value = metric_value(new, gate.metric)
        verdict = {"metric": gate.metric, "student": value, "max_regression": gate.max_regression,
                   "higher_is_better": gate.higher_is_better, "promoted": None, "regression": None}
        if value is None:
            out.append({**verdict, "passed": False, "why": "the new student has no value for this metric"})
            continue
        if promoted is None:
            out.append({**verdict, "passed": True, "why": "no promoted student yet"})
            continue
        before = metric_value(promoted, gate.metric)
        if before is None:
            out.append({**verdict, "passed": True, "why": "the promoted student has no value for this metric"})
            continue
        regression = before - value if gate.higher_is_better else value - before
        passed = regression <= gate.max_regression
        out.append({**verdict, "promoted": before, "regression": regression, "passed": passed,
                    "why": f"regression {regression:+.4g} {'<=' if passed else '>'} {gate.max_regression:g}"})
    return out
