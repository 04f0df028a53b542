"""Scheduled incremental retraining: new prompts only, gated promotion, rollback (see run.py)."""
