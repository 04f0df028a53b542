"""Tokenizer preflight: before step 1, decide whether the teacher's token ids mean the same to the student.

Three outcomes:
- exact: the same tokenizer and the same logit width.
- truncate: the same vocabulary up to padding rows (e.g. a teacher with 152,064 logit rows and a student
  with 151,936, both on a 151,665-token tokenizer; or a tokenizer that only adds tokens at the end).
  Teacher top-k entries at ids the student does not have are moved into the tail, and samples whose
  completion uses such an id are skipped; the log says so.
- refuse: different vocabularies. Token-level distillation would train on the wrong tokens, so training
  stops with the options: sequence-level KD (`train.mode: seq_kd`, which re-tokenises the teacher's
  text for the student) or a student on the teacher's tokenizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llmdistill import models
from llmdistill.errors import UserError

log = logging.getLogger("llmdistill")


@dataclass
class Preflight:
    outcome: str  # "exact" | "truncate" | "retokenize" | "cross_tokenizer"
    student_vocab: int  # student logit width: teacher ids >= this are moved into the tail
    message: str


def check(prov: dict, teacher_tokenizer, student_tokenizer, student_vocab: int, mode: str) -> Preflight:
    """Compare the teacher that made the data (manifest provenance) with the student, before training.

    `teacher_tokenizer` is loaded from the manifest's teacher source (only needed when hashes differ).
    """
    teacher_vocab = int(prov["vocab_size"])
    same = models.tokenizer_info(student_tokenizer)["tokenizer_hash"] == prov["tokenizer_hash"]
    if mode == "seq_kd":
        if same:
            return Preflight("exact", student_vocab, "sequence-level KD on the teacher's own tokens")
        return Preflight("retokenize", student_vocab,
                         "sequence-level KD: the teacher's text is re-tokenised with the student's tokenizer")
    if same and teacher_vocab == student_vocab:
        return Preflight("exact", student_vocab, f"tokenizers identical, vocabulary {student_vocab}")
    if same or _prefix_compatible(teacher_tokenizer, student_tokenizer):
        msg = (f"same vocabulary up to padding rows (teacher logits {teacher_vocab}, student {student_vocab}, "
               f"tokenizer sizes {prov['tokenizer_size']} / {len(student_tokenizer)}): teacher top-k ids >= "
               f"{student_vocab} are moved into the tail, samples that use them are skipped")
        if mode == "on_policy":
            raise UserError("train: on-policy distillation needs the teacher's exact tokenizer and vocabulary; "
                            + msg.split(":")[0])
        return Preflight("truncate", student_vocab, msg)
    if mode == "offline":
        return Preflight("cross_tokenizer", student_vocab,
                         "the student's tokenizer differs from the teacher's: cross-tokenizer distillation (tokens "
                         "aligned by bytes; exact divergence where they match, ULD where they do not)")
    raise UserError(
        "train: the student's tokenizer differs from the teacher's (tokenizer hash "
        f"{models.tokenizer_info(student_tokenizer)['tokenizer_hash'][:12]} vs {prov['tokenizer_hash'][:12]}), "
        "so the stored token ids would mean different tokens. Options: train.mode: seq_kd (sequence-level KD on "
        "the teacher's text, re-tokenised), or a student on the teacher's tokenizer (e.g. train.student.teacher_layers)"
    )


def _prefix_compatible(teacher_tokenizer, student_tokenizer) -> bool:
    """True when the smaller vocabulary maps every token to the same id in the larger one."""
    if teacher_tokenizer is None:
        return False
    a, b = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    return all(large.get(tok) == i for tok, i in small.items())


def check_teacher_mix(manifest: dict, present: set[str], logit_loss: bool, cross_ok: bool = False) -> bool:
    """Several teachers in one dataset (generate.routing): True when their tokenizers differ.

    Their stored token ids and top-k then belong to different vocabularies: text-only training (seq_kd,
    CE-only) re-tokenises every row; a logit loss from the stored top-k (`cross_ok`) aligns each row to its
    own teacher's tokens (cross_tokenizer.py); any other logit loss (a live or served teacher, on-policy)
    is refused."""
    teachers = manifest.get("teachers") or {}
    hashes = {name: teachers[name]["tokenizer_hash"] for name in sorted(present) if name in teachers}
    if len(set(hashes.values())) <= 1:
        return False
    if logit_loss and not cross_ok:
        listed = ", ".join(f"{name} ({h[:12]})" for name, h in hashes.items())
        raise UserError(f"train: the data mixes teachers with different tokenizers ({listed}); a live or served "
                        "teacher, or on-policy training, needs one. Distil from the stored top-k (train.mode: "
                        "offline, teacher_signal: stored: each row aligned to its own teacher), route every prompt "
                        "to teachers sharing one tokenizer, or use train.mode: seq_kd (text only)")
    return True


PROBE_TURN = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Fine, thanks"}]


def turn_end(tokenizer) -> str | None:
    """The first token the tokenizer's chat template writes after an assistant turn's text (e.g. <|im_end|>), or
    None when it writes nothing there."""
    text = models.render_chat(tokenizer, PROBE_TURN, add_generation_prompt=False)
    after = text.rsplit(PROBE_TURN[-1]["content"], 1)[-1]
    pieces = tokenizer.tokenize(after) if after else []
    return pieces[0] if pieces else None


def check_turn_end(teacher_tokenizer, teacher_stop: list[int], student_tokenizer, student_stop: list[int]) -> None:
    """On-policy training samples the student until it ends its turn and lets the teacher score what it wrote: both
    must end a turn the same way, or the student learns to ramble past the teacher's end of turn (or to stop where
    the teacher would not). One line, before any sampling, unless the student stops on the token the teacher's
    template ends a turn with, and the two stop on a token in common. `*_stop`: the ids that end a generation
    (generation config and tokenizer EOS)."""
    names = {"teacher": {teacher_tokenizer.convert_ids_to_tokens(i) for i in teacher_stop},
             "student": {student_tokenizer.convert_ids_to_tokens(i) for i in student_stop}}
    end = turn_end(teacher_tokenizer)
    if end is not None and end in names["teacher"] and end not in names["student"]:
        raise UserError(f"train.on_policy: the teacher ends a turn with {end!r} but the student stops on "
                        f"{sorted(names['student'])}: its samples would run past the end of the turn the teacher "
                        "scores; give the student the teacher's tokenizer and generation config (eos_token_id)")
    if not names["teacher"] & names["student"]:
        raise UserError(f"train.on_policy: the teacher stops on {sorted(names['teacher'])} and the student on "
                        f"{sorted(names['student'])}: they end their turns differently, so the student would learn "
                        "to ramble; give the student the teacher's tokenizer and generation config (eos_token_id)")
