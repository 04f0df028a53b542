"""Run configuration: pydantic models (unknown keys are errors), YAML loading, `key.sub=value` overrides.

Defaults live here and only here: stage code reads `cfg.section.field`, never `dict.get(x, default)`.
Relative input paths written in a config file are resolved against that file's directory; relative
paths given as command-line overrides, and `output_dir`, against the current directory.

`load_config` collects every problem (unknown key with a did-you-mean, wrong type, missing file) and
raises one `ConfigError` that lists them all; it never loads a model. A key written twice in one YAML
mapping is an error naming both lines (PyYAML alone would keep the last).

One module per concern: base (Section, path types, ConfigError), load (YAML, overrides, error lines),
teacher, generate (and annotate), filter, train, evaluate (eval and retrain), root (Config), bert.
Everything public in them is re-exported here, so a new name is written in its module only: import from
`llmdistill.config`. This package imports no stage (validate stays torch-free).
"""

from __future__ import annotations

# every public name of each module; a new class or constant needs no line here
from llmdistill.config.base import *  # noqa: F403
from llmdistill.config.bert import *  # noqa: F403
from llmdistill.config.evaluate import *  # noqa: F403
from llmdistill.config.filter import *  # noqa: F403
from llmdistill.config.generate import *  # noqa: F403
from llmdistill.config.load import *  # noqa: F403
from llmdistill.config.root import *  # noqa: F403
from llmdistill.config.teacher import *  # noqa: F403
from llmdistill.config.train import *  # noqa: F403
