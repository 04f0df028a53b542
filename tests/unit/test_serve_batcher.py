"""serve-bert's micro-batcher (any model function: here one that returns each text's index, so a reply
that carries another request's rows is visible) and the CLI options' defaults against ServeSettings."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from llmdistill.bert.serve.app import Batcher
from llmdistill.bert.serve.settings import ServeSettings


class Model:
    """Records each call's texts; the first call waits for `release`, so requests pile up behind it."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, texts: list[str]):
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            await self.release.wait()
        if self.fail_on in texts:
            raise RuntimeError("model failed")
        ids = [int(t.split("-")[1]) for t in texts]
        return ids, np.array([[i, -i] for i in ids], dtype=float)


def test_requests_that_queue_while_the_model_is_busy_share_one_call_and_get_their_own_rows():
    async def main():
        model = Model()
        batcher = Batcher(model, max_texts=8, wait_s=0)
        first = asyncio.ensure_future(batcher.submit(["t-0"]))
        await asyncio.sleep(0.01)  # the model is now busy with t-0
        rest = [asyncio.ensure_future(batcher.submit([f"t-{i}", f"t-{i + 100}"])) for i in range(1, 8)]
        await asyncio.sleep(0.01)
        model.release.set()
        return model, await first, await asyncio.gather(*rest)

    model, first, rest = asyncio.run(main())
    assert model.calls[0] == ["t-0"]
    # 14 queued texts: the next call takes whole requests up to 8 texts, then the rest
    assert [len(c) for c in model.calls[1:]] == [8, 6]
    assert first[0] == [0]
    for i, (ids, probs) in enumerate(rest, 1):
        assert ids == [i, i + 100] and probs.tolist() == [[i, -i], [i + 100, -i - 100]]


def test_a_request_larger_than_the_batch_is_one_call_and_a_failure_reaches_only_its_call():
    async def main():
        model = Model(fail_on="t-5")
        batcher = Batcher(model, max_texts=4, wait_s=0)
        busy = asyncio.ensure_future(batcher.submit(["t-0"]))
        await asyncio.sleep(0.01)
        big = asyncio.ensure_future(batcher.submit([f"t-{i}" for i in range(10, 16)]))
        bad = asyncio.ensure_future(batcher.submit(["t-5"]))
        await asyncio.sleep(0.01)
        model.release.set()
        results = await asyncio.gather(busy, big, bad, return_exceptions=True)
        after = await batcher.submit(["t-7"])  # the loop goes on after a failed call
        return model, results, after

    model, (busy, big, bad), after = asyncio.run(main())
    assert [len(c) for c in model.calls] == [1, 6, 1, 1]
    assert big[0] == list(range(10, 16)) and busy[0] == [0] and after[0] == [7]
    assert isinstance(bad, RuntimeError)


def test_wait_gathers_requests_that_arrive_within_it():
    async def main():
        model = Model()
        model.release.set()
        batcher = Batcher(model, max_texts=64, wait_s=0.2)
        first = asyncio.ensure_future(batcher.submit(["t-1"]))
        await asyncio.sleep(0.02)
        second = await batcher.submit(["t-2"])
        return model, await first, second

    model, first, second = asyncio.run(main())
    assert model.calls == [["t-1", "t-2"]] and first[0] == [1] and second[0] == [2]


@pytest.mark.parametrize("option, field", [("--model", "model"), ("--host", "host"), ("--port", "port"),
                                           ("--timeout", "timeout_s"), ("--batch-wait-ms", "batch_wait_ms"),
                                           ("--threads", "threads")])
def test_serve_bert_help_states_the_settings_default(option, field):
    """The CLI's options default to None (ServeSettings holds the defaults); their help says what they are."""
    import typer

    from llmdistill.cli import app

    command = typer.main.get_command(app).commands["serve-bert"]
    param = next(p for p in command.params if option in p.opts)
    default = ServeSettings.model_fields[field].default
    assert param.default is None
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    assert f"(default {shown}" in param.help, param.help
