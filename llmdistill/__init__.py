"""llmdistill: distil large language models into small, fast students.

The public Python API (docs/python-api.md) is the names in `__all__`: the pipeline and its stages
(llmdistill/api.py), the config types, the errors they raise, and the distillation losses. They load on
first use, so `import llmdistill` imports neither torch nor transformers (the losses import torch when
first touched).
"""

import importlib as _importlib

__version__ = "0.1.0"

# every public name -> the module that defines it (one table: __all__ is its keys)
_EXPORTS = {
    # running the pipeline (llmdistill/api.py)
    "load_config": "llmdistill.api",
    "run": "llmdistill.api",
    "run_generate": "llmdistill.api",
    "merge_shards": "llmdistill.api",
    "run_annotate": "llmdistill.api",
    "run_filter": "llmdistill.api",
    "run_train": "llmdistill.api",
    "run_eval": "llmdistill.api",
    "RunResult": "llmdistill.api",
    "status": "llmdistill.api",
    "plan_memory": "llmdistill.api",
    # scheduled retraining (docs/retrain.md)
    "run_retrain": "llmdistill.api",
    "rollback": "llmdistill.api",
    "RetrainResult": "llmdistill.api",
    # reading a run
    "load_dataset": "llmdistill.api",
    "load_metrics": "llmdistill.api",
    "write_report": "llmdistill.api",
    # BERT-style distillation
    "load_bert_config": "llmdistill.api",
    "distill_bert": "llmdistill.api",
    "BertResult": "llmdistill.api",
    # the config types
    "Config": "llmdistill.config",
    "BertDistillConfig": "llmdistill.config",
    # the errors the API raises
    "UserError": "llmdistill.errors",
    "ConfigError": "llmdistill.config",
    "LockedError": "llmdistill.errors",
    "BudgetExceeded": "llmdistill.errors",
    "StorageError": "llmdistill.errors",
    # the losses: teacher log-probs p, student log-probs q -> one value per token
    "forward_kl": "llmdistill.losses",
    "reverse_kl": "llmdistill.losses",
    "jsd": "llmdistill.losses",
    "skew_kl": "llmdistill.losses",
    "skew_reverse_kl": "llmdistill.losses",
    "tvd": "llmdistill.losses",
    "divergence": "llmdistill.losses",
    "sparse_divergence": "llmdistill.losses",
    "dense_divergence": "llmdistill.losses",
    "cross_entropy": "llmdistill.losses",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    """A public name, imported from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmdistill' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
