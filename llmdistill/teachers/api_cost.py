"""What the openai backend spends: prices, what a reply is billed, the running totals (`Meter`), and the budget's
reservations.

The spend counted is what a provider bills: every reply that came back, including one that parsed as JSON with
a `usage` but was unusable afterwards (a malformed logprobs entry, no choices); a reply whose usage cannot be
read (not JSON) is counted at the worst case its request reserved. Paid replies live in the request cache (good
ones in `replies`, unusable ones in `unusable`), so a rerun's budget starts from everything already paid.

The budget (`teacher.api.budget_usd`) holds because every attempt that may be billed has its worst case
reserved when it starts, beside what is spent and what the others reserved: a request reserves before its
first attempt, and after an attempt that was billed and unusable it takes the reservation again before the
retry (or gives up: the budget is reached).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from llmdistill.errors import BudgetExceeded


def cost_usd(prompt_tokens: int, completion_tokens: int, price) -> float:
    """Dollars for one reply at `price` (USD per 1M prompt / completion tokens)."""
    return (prompt_tokens * price.prompt + completion_tokens * price.completion) / 1e6


def prompt_token_bound(messages: list[dict]) -> int:
    """An upper bound on a chat prompt's tokens without its tokenizer: its UTF-8 bytes plus 8 per turn and 8 more,
    true for any tokenizer whose tokens are at least one byte (the budget needs an upper bound)."""
    return sum(len(str(m.get("content") or "").encode("utf-8")) + 8 for m in messages) + 8


def worst_case_tokens(body: dict) -> tuple[int, int]:
    """(prompt, completion) tokens a request body can be billed at most, read from the body alone."""
    prompt = body.get("prompt")
    prompt_tokens = len(prompt) if isinstance(prompt, list) else (
        len(str(prompt).encode("utf-8")) + 8 if prompt is not None else prompt_token_bound(body.get("messages") or []))
    return prompt_tokens, int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Billed(msgspec.Struct):
    usage: _Usage


_BILLED = msgspec.json.Decoder(_Billed)


def billed_tokens(body: bytes | str) -> tuple[int, int] | None:
    """(prompt, completion) tokens from a reply's `usage`, whatever else the reply holds; None when the body is not
    JSON or has no readable usage (whole numbers >= 0)."""
    try:
        usage = _BILLED.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if usage.prompt_tokens < 0 or usage.completion_tokens < 0:
        return None
    return usage.prompt_tokens, usage.completion_tokens


@dataclass
class Meter:
    """What this process sent and spent (the manifest and the logs report it)."""

    requests: int = 0  # distinct requests that needed the network
    attempts: int = 0  # HTTP attempts, retries included
    cache_hits: int = 0
    retries: dict = field(default_factory=dict)  # reason -> count
    failed: dict = field(default_factory=dict)  # final reason -> count
    prompt_tokens: int = 0  # billed, as the replies' usage says
    completion_tokens: int = 0
    cost_usd: float = 0.0  # billed: good replies, unusable ones (at their worst case where usage is unreadable)
    paid_unusable: int = 0  # replies billed but unusable (malformed), counted in cost_usd

    def count(self, table: dict, reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return {"requests": self.requests, "attempts": self.attempts, "cache_hits": self.cache_hits,
                "retries": dict(sorted(self.retries.items())), "failed": dict(sorted(self.failed.items())),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": round(self.cost_usd, 6), "paid_unusable": self.paid_unusable}

    def bill(self, tokens: tuple[int, int] | None, cost: float, usable: bool = True) -> None:
        """Count one billed reply: its tokens (None: not known) and its cost."""
        if tokens is not None:
            self.prompt_tokens += tokens[0]
            self.completion_tokens += tokens[1]
        self.cost_usd += cost
        if not usable:
            self.paid_unusable += 1


def budget_exceeded(budget_usd: float, spent: float | None = None) -> BudgetExceeded:
    spent_text = "" if spent is None else f" (${spent:.4f} spent in this run)"
    return BudgetExceeded(f"teacher.api.budget_usd ${budget_usd:g} reached{spent_text}: finished batches are "
                          "committed and every paid reply is in the request cache; raise the budget and rerun to "
                          "continue")


def summary(usage: dict, mapping: dict | None) -> str:
    """The one log line about a teacher's requests and spend."""
    text = (f"{usage['requests']} requests sent ({usage['attempts']} attempts), {usage['cache_hits']} from the "
            f"cache, retries {usage['retries'] or 0}, failed {usage['failed'] or 0}, "
            f"{usage['prompt_tokens']}+{usage['completion_tokens']} tokens, ${usage['cost_usd']:.4f} "
            f"(${usage['spent_usd_in_run']:.4f} in this run)")
    if usage.get("paid_unusable"):
        text += f", {usage['paid_unusable']} paid replies unusable"
    if mapping:
        unmapped = {k: v for k, v in mapping.items() if k.startswith("unmapped_") and k != "unmapped_examples"}
        if unmapped:
            text += f"; tokens that did not map: {unmapped} e.g. {', '.join(mapping['unmapped_examples'])}"
    return text
