"""transformers `Trainer` with the distillation objective in `compute_loss`.

The loop stays visible: the student's decoder runs once, the hidden states at completion positions
are gathered, and `objective.chunked_loss` turns them into the weighted KL + CE sum chunk by chunk.
Checkpointing, resume, logging, gradient accumulation and `accelerate launch` come from `Trainer`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from llmdistill import faults, models, store
from llmdistill.config import needs_teacher
from llmdistill.errors import UserError
from llmdistill.train import sources
from llmdistill.train.curriculum import PacedSampler, closed_loop_weights
from llmdistill.train.objective import chunked_loss


def phase_schedule(kind: str, warmup: int, total: int, first: int, kwargs: dict | None = None):
    """The learning-rate factor at step s of a phase that starts at step `first` of a `total`-step run: the run's
    schedule (`kind` with `warmup` steps, as transformers builds it) at step first + s. A phase after the first
    starts a fresh optimizer, so it warms up again over `warmup` steps to the run's rate (a fresh Adam's first
    steps move every weight by about the learning rate)."""
    from transformers.optimization import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    whole = get_scheduler(kind, optimizer=probe, num_warmup_steps=warmup, num_training_steps=total,
                          scheduler_specific_kwargs=kwargs or {}).lr_lambdas[0]

    def factor(s: int) -> float:
        rewarm = min(1.0, (s + 1) / (warmup + 1)) if first and warmup else 1.0
        return whole(first + s) * rewarm

    return factor


class DistillTrainer(Trainer):
    # compute_loss divides by the token count of the whole accumulated batch (num_items_in_batch), so
    # batch 8 x accumulation 1 and batch 2 x accumulation 4 give the same gradient.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, loss_terms, chunk_tokens: int | None, source=None, curriculum=None,
                 tail: str = "bucket", capture_temperature: float = 1.0, teacher_model=None, uld_weight: float = 1.0,
                 schedule_window: tuple[int, int] | None = None, **kwargs):
        """source: where the teacher signal comes from (`sources.build`; the collator's source). Without one, it
        is made from the parts (`sources.from_parts`): a live `teacher_model` (or {index: teacher} for routed
        teachers), else the stored top-k captured at `capture_temperature` with its `tail` policy.
        curriculum: a `config.CurriculumConfig` (pacing and the closed loop), or None.
        schedule_window: (first step, total steps) when this run is one phase of a longer one (offline on-policy
        rounds): the learning rate follows the whole run's schedule from its first step (`phase_schedule`)."""
        self.schedule_window = schedule_window
        super().__init__(*args, **kwargs)
        self.curriculum = curriculum
        self.paced_sampler: PacedSampler | None = None
        self._closed_loop_term = next((t.name for t in loss_terms if t.is_divergence), None)
        self._div_sum = self._div_count = None
        self._last_reweight = 0
        self.loss_terms = list(loss_terms)
        self.chunk_tokens = chunk_tokens
        if source is None:
            source = sources.from_parts(needs_teacher(self.loss_terms), teacher_model=teacher_model, tail=tail,
                                        capture_temperature=capture_temperature, uld_weight=uld_weight)
        self.source = source
        self.source.to(self.args.device)
        # running per-term sums for the log, training and held-out apart: {'train' | 'eval': (sums, tokens)}
        self._term_sums: dict[str, tuple[dict[str, torch.Tensor], int]] = {}
        self._served_checked = None  # training tokens whose served teacher rows were checked, since the last log
        self._levels = None  # the curriculum level of each training row, by its `row` (see `_record_levels`)
        self._level_sums = None  # (sum of levels, tokens, highest level) of the training tokens since the last log
        # more figures for each training log entry (e.g. the rollouts' statistics): callables returning {key: number}
        self.extra_logs: list = []
        self.add_callback(FaultPoints())

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.schedule_window is not None:
            first, total = self.schedule_window
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer,
                phase_schedule(self.args.lr_scheduler_type, self.args.get_warmup_steps(total), total, first,
                               self.args.lr_scheduler_kwargs))
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        hidden = final_hidden_states(model, inputs["input_ids"], *sources.attention(inputs))
        # position i predicts token i + 1
        mask = labels[:, 1:] != -100
        h = hidden[:, :-1][mask]
        targets = labels[:, 1:][mask]
        closed_loop = (self.curriculum is not None and self.curriculum.closed_loop_every is not None
                       and self._closed_loop_term is not None)
        head, post = _head(model)
        signal = self.source.signal(inputs, mask, model)
        sums = chunked_loss(h, head, targets, signal, self.loss_terms, self.chunk_tokens,
                            per_token=self._closed_loop_term if closed_loop else None, logit_post=post)
        if closed_loop:
            self._record_divergence(inputs["rows"], mask, sums.pop("per_token"))
        n_tokens = targets.shape[0]
        if num_items_in_batch is not None:
            loss = sums["total"] / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # num_items_in_batch counts every process
        else:
            # set by Trainer inside train(); a direct call (evaluation, a test) counts as one micro-batch
            accumulation = getattr(self, "current_gradient_accumulation_steps", 1)
            loss = sums["total"] / max(n_tokens, 1) / accumulation
        # running sums for the training (or held-out) log; no per-step sync with .item()
        split = "train" if model.training else "eval"
        running, tokens = self._term_sums.get(split, ({}, 0))
        for name, value in sums.items():
            running[name] = running.get(name, 0.0) + value.detach()
        self._term_sums[split] = (running, tokens + n_tokens)
        if model.training and "rows" in inputs:
            self._record_levels(inputs["rows"], mask)
        checked = inputs.get("served_checked_tokens")
        if checked is not None and model.training:
            self._served_checked = checked if self._served_checked is None else self._served_checked + checked
        return (loss, {"hidden": hidden}) if return_outputs else loss

    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        faults.point("checkpoint-partial")  # weights and optimizer saved, trainer_state.json not yet

    def _get_train_sampler(self, train_dataset=None):
        c = self.curriculum
        if c is None or c.pacing == "none":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        a = self.args
        global_batch = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
        self.paced_sampler = PacedSampler(dataset["level"], c.pacing, c.start, c.full_at, a.max_steps, global_batch,
                                          a.seed)
        return self.paced_sampler

    def _record_divergence(self, rows, mask, per_token) -> None:
        """Accumulate each sample's divergence; every `closed_loop_every` steps, reweight the sampler."""
        n = len(self.train_dataset)
        if self._div_sum is None:
            self._div_sum = torch.zeros(n, dtype=torch.float64)
            self._div_count = torch.zeros(n, dtype=torch.float64)
        rows = rows.to(per_token.device)
        token_rows = (rows[:, 1:][mask] if rows.dim() == 2 else rows[mask.nonzero()[:, 0]]).cpu()  # 2-D: packed
        self._div_sum.index_add_(0, token_rows, per_token.double().cpu())
        self._div_count.index_add_(0, token_rows, torch.ones_like(token_rows, dtype=torch.float64))
        step, every = self.state.global_step, self.curriculum.closed_loop_every
        if step > 0 and step % every == 0 and step != self._last_reweight and self.paced_sampler is not None:
            self._last_reweight = step
            div_sum, div_count = self._div_sum.clone(), self._div_count.clone()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(div_sum)  # every rank sees every sample's measurements
                torch.distributed.all_reduce(div_count)
            seen = (div_count > 0).nonzero()[:, 0].tolist()
            means = {i: float(div_sum[i] / div_count[i]) for i in seen}
            self.paced_sampler.weights = closed_loop_weights(means, n, self.curriculum.drop_fraction,
                                                             self.curriculum.repeat_fraction)

    def _record_levels(self, rows: torch.Tensor, mask: torch.Tensor) -> None:
        """Add the curriculum levels of this batch's training tokens (`mask` [B, L-1]) to the running sums, on the
        device (no per-step sync). rows: each sample's `row` [B], or each token's [B, L] when packed (-1: none)."""
        if self._levels is None:
            data = self.train_dataset
            if "level" not in data.column_names or "row" not in data.column_names or not len(data):
                self._levels = False
                return
            rows_, levels_ = list(data["row"]), [float(lv or 0) for lv in data["level"]]
            levels = torch.zeros(max(rows_) + 1, dtype=torch.float32)
            levels[torch.tensor(rows_)] = torch.tensor(levels_)
            self._levels = levels.to(mask.device)
        if self._levels is False:
            return
        rows = rows.to(mask.device)
        per_row = self._levels[rows.clamp(min=0, max=len(self._levels) - 1)]
        token_levels = per_row[:, 1:] if rows.dim() == 2 else per_row[:, None].expand_as(mask)
        weights = mask.float()
        top = torch.where(mask, token_levels, torch.full_like(token_levels, -1.0)).max()
        total, tokens, highest = self._level_sums or (0.0, 0.0, torch.tensor(-1.0, device=mask.device))
        self._level_sums = (total + (token_levels * weights).sum(), tokens + weights.sum(), torch.maximum(highest, top))

    def _curriculum_logs(self) -> dict:
        """curriculum_level: the mean level of the training tokens since the last log; curriculum_max_level: the
        highest among them; with pacing, curriculum_pool: the share of the training data admitted at this step."""
        out = {}
        if self._level_sums is not None:
            total, tokens, highest = self._level_sums
            if float(tokens) > 0:
                out = {"curriculum_level": round(float(total) / float(tokens), 4),
                       "curriculum_max_level": int(highest)}
            self._level_sums = None
        s = self.paced_sampler
        if s is not None:
            from llmdistill.train.curriculum import pool_size

            size = pool_size(s.pacing, self.state.global_step / max(s.total_steps, 1), s.levels, s.start, s.full_at)
            out["curriculum_pool"] = round(size / max(len(s.levels), 1), 4)
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each term's token mean since the last log: `loss_<term>` beside the training loss,
        `eval_loss_<term>` beside the held-out one. `loss_ce` is always there (see `objective`): the one
        quantity that compares students trained with different objectives. A served teacher adds
        `served_signal_checked_tokens`: the tokens since the last log whose served rows were checked. Beside the
        training loss also: the curriculum (`_curriculum_logs`) and what `extra_logs` give (the rollouts')."""
        for split, key, prefix in (("train", "loss", "loss_"), ("eval", "eval_loss", "eval_loss_")):
            running, tokens = self._term_sums.get(split, ({}, 0))
            if tokens and key in logs:
                for name, value in running.items():
                    if name != "total":
                        logs[f"{prefix}{name}"] = round(float(value) / tokens, 5)
                logs["tokens" if split == "train" else "eval_tokens"] = tokens
                del self._term_sums[split]
        if self._served_checked is not None and "loss" in logs:
            logs["served_signal_checked_tokens"] = int(self._served_checked)
            self._served_checked = None
        if "loss" in logs:
            logs.update(self._curriculum_logs())
            for extra in self.extra_logs:
                logs.update(extra())
        super().log(logs, start_time)


class LogAtCheckpoints(TrainerCallback):
    """Log at every checkpoint step (not only every `logging_steps`), so that a checkpoint never holds
    steps whose losses are not yet in its log history. A run resumed from it then logs exactly what an
    uninterrupted run logs, and the mean training loss over all steps (`mean_train_loss`) is the same."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True


class ReportToTrackers(TrainerCallback):
    """Send every log entry (the training and held-out losses with their terms, curriculum, rollouts) to the
    variant's tracker run (`tracking.Run`, train.report_to) at its step; `offset`: where this Trainer's steps start
    in the variant (a phase of offline on-policy rounds). Only the main process logs."""

    def __init__(self, run, offset: int = 0):
        from llmdistill import tracking

        self.run, self.offset, self.scalars = run, offset, tracking.trainer_scalars

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.run.log(self.scalars(logs), self.offset + state.global_step)


class StopOnNonFinite(TrainerCallback):
    """Stop training, with one line, when the gradient norm or a logged loss term is NaN or infinite.

    Trainer itself keeps going (its `logging_nan_inf_filter` even hides a NaN loss behind the running mean):
    after one bad step every weight is NaN, and the run would save a useless student as if all were well."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: v for k, v in (logs or {}).items()
               if (k == "grad_norm" or k.startswith("loss") or k.startswith("eval_loss")) and not _finite(v)}
        if bad:
            raise UserError(f"train: {', '.join(f'{k} is {v}' for k, v in bad.items())} at step {state.global_step}: "
                            f"training diverged (lower train.lr, now {args.learning_rate:g}, or add warm-up steps); "
                            "no student was saved")


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number: nothing to say


def mean_train_loss(history: list[dict]) -> float | None:
    """The mean per-step training loss over every step in a Trainer log history (None before any).

    Each entry with a "loss" is the mean over the steps since the entry before it; the history a run
    resumes with is the checkpoint's, so the mean covers the steps of every attempt (Trainer's own
    `training_loss` covers only the last `train()` call)."""
    total, steps, last = 0.0, 0, 0
    for entry in history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            steps += entry["step"] - last
            last = entry["step"]
    return total / steps if steps else None


class FaultPoints(TrainerCallback):
    """The `step` and `checkpoint` points of `llmdistill.faults` (inert unless LLMDISTILL_FAULT is set), and
    the umask's mode for a saved checkpoint (safetensors writes its weights 0600 whatever the umask)."""

    def on_step_end(self, args, state, control, **kwargs):
        faults.point("step")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                store.apply_file_mode(checkpoint)
        faults.point("checkpoint")


def final_hidden_states(model, input_ids, attention_mask, position_ids=None):
    """The decoder's final (normed) hidden states [B, L, H], computed through `model`'s own forward.
    Packed rows (`data.Collator`'s pack_to) come with position_ids and no attention_mask.

    Going through the (possibly DDP- or peft-wrapped) model's forward, not straight to its decoder,
    keeps the wrappers' hooks in play: DDP only all-reduces gradients of a forward it has seen. The
    model projects just one position (logits_to_keep=1); the loss projects the rest chunk by chunk.
    """
    captured = {}

    def grab(module, args, output):
        captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = _unwrap(model).get_decoder().register_forward_hook(grab)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1,
              use_cache=False)
    finally:
        handle.remove()
    return captured["hidden"]


def check_packing(model) -> None:
    """Refuse sequence packing for a model whose attention does not keep packed samples apart. transformers
    reads sample boundaries from position_ids in its shared mask code (Llama, Qwen, Mistral, Gemma, ...); a
    model with attention code of its own may ignore them, and packed samples would then see each other."""
    a, b = [3, 4, 5, 6, 7, 8], [4, 5, 6, 7, 8]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        plain = final_hidden_states(model, torch.tensor([a, b + [0]]), torch.tensor([[1] * 6, [1] * 5 + [0]]))
        positions = torch.tensor([list(range(6)) + list(range(5))])
        packed = final_hidden_states(model, torch.tensor([a + b]), None, positions)
    model.train(was_training)
    apart = torch.allclose(packed[0, 6:], plain[1, :5], rtol=1e-3, atol=1e-4)
    if not apart or not torch.allclose(packed[0, :6], plain[0], rtol=1e-3, atol=1e-4):
        raise UserError(f"train.packing: {type(_unwrap(model)).__name__} does not keep packed samples apart (its "
                        "attention ignores the position ids that mark them); set train.packing: false")


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _head(model):
    """The (possibly wrapped) model's LM head and its output function, see `models.lm_head`."""
    return models.lm_head(_unwrap(model))
