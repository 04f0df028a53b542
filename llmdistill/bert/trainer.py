"""A plain torch training loop (AdamW, linear warm-up and decay) and evaluation helpers.

The loop is visible: for each batch, `step_loss(batch)` returns (loss, {term: value}); the loop does the
backward pass, clipping and the optimiser step, and logs the mean of each term every `log_every` steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from llmdistill.bert import data as bdata

log = logging.getLogger("llmdistill")


def linear_schedule(optimizer, total: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def plan_steps(n_batches: int, epochs: float, max_steps: int | None) -> int:
    return max_steps if max_steps is not None else max(1, math.ceil(n_batches * epochs))


def train_loop(params: list[torch.nn.Parameter], modules: list[torch.nn.Module], enc: bdata.Encoded,
               step_loss: Callable, *, batch_size: int, epochs: float, max_steps: int | None, lr: float,
               warmup_ratio: float, weight_decay: float, seed: int, log_every: int, name: str,
               on_log: Callable[[int, dict], None] | None = None) -> dict:
    """Train `params` for the planned number of steps over `enc`; returns {steps, seconds, last: {term: mean}}.
    on_log(step, {loss_<term>: mean since the last log, learning_rate}) is called at every log (the trackers)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    per_epoch = len(bdata.batches(enc, batch_size, seed))
    total = plan_steps(per_epoch, epochs, max_steps)
    scheduler = linear_schedule(optimizer, total, int(total * warmup_ratio))
    for m in modules:
        m.train()
    sums: dict[str, float] = {}
    count, step, epoch, start = 0, 0, 0, time.time()
    last: dict[str, float] = {}
    while step < total:
        for index in bdata.batches(enc, batch_size, seed + epoch):
            if step >= total:
                break
            loss, terms = step_loss(bdata.collate(enc, index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            if step % log_every == 0 or step == total:
                last = {k: v / count for k, v in sums.items()}
                log.info("%s step %d/%d %s (%.1f s)", name, step, total,
                         " ".join(f"{k}={v:.4f}" for k, v in last.items()), time.time() - start)
                if on_log is not None:
                    on_log(step, {**{f"loss_{k}": v for k, v in last.items()},
                                  "learning_rate": scheduler.get_last_lr()[0]})
                sums, count = {}, 0
        epoch += 1
    for m in modules:
        m.eval()
    return {"steps": total, "seconds": round(time.time() - start, 1), "last": last}


@torch.no_grad()
def predict_logits(model, enc: bdata.Encoded, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    for index in bdata.batches(enc, batch_size, None):
        b = bdata.collate(enc, index)
        out.append(model(b["input_ids"], b["attention_mask"]))
    return torch.cat(out)


def classification_metrics(pred: list[int], gold: list[int], num_labels: int) -> dict:
    """Accuracy and macro-F1 (F1 per class, averaged; a class never predicted nor present scores 0)."""
    n = len(gold)
    acc = sum(p == g for p, g in zip(pred, gold)) / n
    f1s = []
    for c in range(num_labels):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": round(acc, 4), "macro_f1": round(sum(f1s) / num_labels, 4), "n": n}
