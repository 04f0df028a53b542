"""`teacher.api.client_processes` > 1: worker processes, each an OpenAITeacher sending its share of every batch,
for when one process's CPU, not the server, is the limit (hundreds of requests in flight).

Each keeps max_concurrency / N in flight, under rate limits and the budget left split N ways, so together they
stay within them. They share the request cache (SQLite in WAL mode takes their writes in turn). The parent
builds the request bodies; a worker sends them, reads the replies into Generations and returns those with its
running totals (requests, retries, cost; token-mapping counts). A worker closes its teacher when it exits, and
exits when the parent does (even a killed one).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from llmdistill.config import TeacherConfig
from llmdistill.errors import BudgetExceeded
from llmdistill.teachers.api_cost import Meter, budget_exceeded
from llmdistill.teachers.base import Generation, Sampling


class ClientProcesses:
    """The worker processes of one OpenAITeacher (see the module docstring)."""

    def __init__(self, tcfg: TeacherConfig, sampling: Sampling, cache_dir: Path | None, spent_before: float):
        import concurrent.futures
        import multiprocessing

        o, n = tcfg.api, tcfg.api.client_processes
        share = {"client_processes": 1, "max_concurrency": max(1, o.max_concurrency // n),
                 "max_connection_failures": max(1, o.connection_failure_limit() // n)}
        for name, value in (("requests_per_minute", o.requests_per_minute), ("tokens_per_minute", o.tokens_per_minute)):
            if value is not None:
                share[name] = value / n
        if o.budget_usd is not None:
            share["budget_usd"] = spent_before + max(o.budget_usd - spent_before, 0.0) / n or 1e-9
        self.tcfg = tcfg.model_copy(update={"api": o.model_copy(update=share)})
        self.n, self.budget = n, o.budget_usd
        self.pool = concurrent.futures.ProcessPoolExecutor(
            n, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
            initargs=(self.tcfg, sampling, cache_dir))
        self.totals: dict[int, dict] = {}  # worker pid -> its latest running totals

    def generate(self, jobs: list[tuple[dict, int]]) -> list[Generation]:
        shares = [jobs[w::self.n] for w in range(self.n)]  # interleaved: slow and fast requests spread evenly
        futures = [self.pool.submit(_worker_run, share) for share in shares if share]
        results, error = [], None
        for f in futures:  # every worker's answer first (their replies are cached either way), then any error
            try:
                gens, pid, totals = f.result()
                self.totals[pid] = totals
                results.append(gens)
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the others finished
                error = error or e
        if isinstance(error, BudgetExceeded):  # a worker's share is spent: said for the whole run
            raise budget_exceeded(self.budget) from None
        if error is not None:
            raise error
        out: list[Generation | None] = [None] * len(jobs)
        for w, gens in enumerate(results):
            out[w::self.n] = gens
        return out

    def usage(self, own: Meter) -> dict:
        total = own.as_dict()
        for t in self.totals.values():
            for key, value in t["usage"].items():
                if isinstance(value, dict):
                    merged = dict(total[key])
                    for reason, count in value.items():
                        merged[reason] = merged.get(reason, 0) + count
                    total[key] = dict(sorted(merged.items()))
                else:
                    total[key] = round(total[key] + value, 6) if isinstance(value, float) else total[key] + value
        return total

    def mapping(self) -> dict:
        reports = [t["mapping"] for t in self.totals.values() if t.get("mapping")]
        if not reports:
            return {}
        merged = dict(reports[0])
        for r in reports[1:]:
            for key, value in r.items():
                if isinstance(value, int) and key != "vocab_clashes":
                    merged[key] = merged.get(key, 0) + value
            merged["unmapped_examples"] = list(dict.fromkeys(merged["unmapped_examples"] + r["unmapped_examples"]))[:5]
        return merged

    def close(self) -> None:
        """Stop the workers; each closes its teacher as it exits (`_worker_start`)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


_WORKER = None  # this worker process's OpenAITeacher


def _worker_start(tcfg: TeacherConfig, sampling: Sampling, cache_dir: Path | None) -> None:
    global _WORKER
    import atexit
    import signal

    from llmdistill.teachers.api import OpenAITeacher

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parent = os.getppid()

    def orphaned() -> None:  # a killed parent (SIGKILL, OOM) leaves no worker behind
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()
    _WORKER = OpenAITeacher(tcfg, sampling, cache_dir)
    atexit.register(_WORKER.close)  # the worker exits when the parent shuts the pool down


def _worker_run(jobs: list[tuple[dict, int]]) -> tuple[list[Generation], int, dict]:
    gens = _WORKER.run_jobs(jobs)
    mapping = _WORKER.mapper.report() if _WORKER.mapper is not None else None
    return gens, os.getpid(), {"usage": _WORKER.meter.as_dict(), "mapping": mapping}
