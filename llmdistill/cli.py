"""The `llmdistill` command: a thin layer over the Python API (llmdistill/api.py), whose exceptions it turns into
one line and an exit code. Heavy libraries (torch, transformers, datasets) load inside the commands that need
them, so `llmdistill --help` and `llmdistill validate` stay instant.

Exit codes: 0 done; 2 bad input (config, file, model, dataset) or a refused read/write (disk full,
permission denied): one line, no traceback; 3 the run directory is locked by another process;
4 a spending budget was reached (finished work kept); 1 anything unexpected (with a traceback). See docs/robustness.md.
`retrain` adds 10 (not promoted: a gate failed) and 11 (nothing to do: no new prompts); see docs/retrain.md.
`plan` adds 5 (the estimated training memory does not fit in --device-memory); see docs/training.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from llmdistill import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distil large language models into small, fast students: generate -> (annotate) -> filter -> train -> eval.",
)

EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
EXIT_BUDGET = 4

CONFIG_HELP = "YAML config (default: the embedded demo, configs/demo.yaml)"
OVERRIDES_HELP = "key.sub=value overrides, e.g. train.max_steps=20 generate.max_prompts=16"


# Libraries that give their top logger a stderr handler of their own when imported (and stop it passing records on)
SELF_HANDLING = ("transformers", "datasets", "huggingface_hub", "ray")


class _LibraryLogger(logging.Logger):
    """The top logger of a library in SELF_HANDLING: it keeps no handler of its own and always passes its records
    on, to the one handler `_setup_logging` decides with (set before the library is imported, kept after)."""

    def addHandler(self, hdlr: logging.Handler) -> None:  # noqa: N802 (logging's name)
        pass

    propagate = property(lambda self: True, lambda self, value: None)


class _Shown(logging.Filter):
    """llmdistill's own records always; a library's (transformers' load reports and missing-keys notes, Ray's
    connection retries, torch's warnings) only with -v, or from ERROR up. A library's line is tagged [library]."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".")[0]
        record.library = "" if top == "llmdistill" else f"[{'warnings' if top == 'py' else top}] "
        if record.name == "py.warnings":  # a warning's text (and the source line, if any) ends with a newline
            record.msg = str(record.msg).rstrip()
        return not record.library or self.verbose or record.levelno >= logging.ERROR


def _setup_logging(verbose: bool) -> None:
    """Log to stderr, with time stamps: llmdistill's INFO lines (DEBUG with -v). Every library logs through the
    same handler, its warnings shown with -v only (and its errors always): a user reads one line per problem,
    not a library's notes on it. Python warnings (torch's, ...) count as a library's."""
    for name in SELF_HANDLING:  # already imported (a CLI run inside another program): drop its handler now
        library = logging.getLogger(name)
        library.handlers.clear()
        library.__class__ = _LibraryLogger
    logging.captureWarnings(True)
    logging.getLogger("llmdistill").setLevel(logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger()
    for shown in (f for h in root.handlers for f in h.filters if isinstance(f, _Shown)):  # set up before: -v now
        shown.verbose = verbose
    if not root.handlers:  # a program (or a test) that set up logging keeps its own
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(library)s%(message)s", "%H:%M:%S"))
        handler.addFilter(_Shown(verbose))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)  # libraries' INFO and DEBUG records are not made at all


def _fail(message: str, code: int) -> None:
    typer.echo(f"llmdistill: error: {' '.join(message.splitlines())}", err=True)  # one line, always
    raise typer.Exit(code)


def _load(config: str | None, overrides: list[str] | None):
    from llmdistill.api import load_config
    from llmdistill.config import ConfigError

    overrides = list(overrides or [])
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # `llmdistill run train.max_steps=5`: overrides on the default config
        config = None
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        _config_errors(e)


def _config_errors(e) -> None:
    """Print a ConfigError (one line per problem) and exit 2."""
    for line in e.errors:
        typer.echo(f"{e.source}: {' '.join(line.splitlines())}", err=True)  # one line per problem, always
    if len(e.errors) > 1:  # a single problem stays a single line
        typer.echo(f"llmdistill: {len(e.errors)} config error(s)", err=True)
    raise typer.Exit(EXIT_BAD_INPUT) from None


def _run(function: str, config, overrides, verbose, **kwargs) -> None:
    """Load the config (its errors one line each), then call the API function `function` (llmdistill/api.py) on
    it: its exceptions become one line and an exit code; the report it wrote after eval is printed."""
    _setup_logging(verbose)
    cfg = _load(config, overrides)
    from llmdistill import api
    from llmdistill.errors import BudgetExceeded, LockedError, UserError, describe_os_error

    try:
        result = getattr(api, function)(cfg, **kwargs)
        if result.report is not None:
            typer.echo(f"report: {result.report}")
    except LockedError as e:
        _fail(str(e), EXIT_LOCKED)
    except BudgetExceeded as e:
        _fail(str(e), EXIT_BUDGET)
    except UserError as e:
        _fail(str(e), EXIT_BAD_INPUT)
    except OSError as e:  # the run directory cannot be created, a checkpoint cannot be saved, ...
        logging.getLogger("llmdistill").debug("I/O error", exc_info=True)
        _fail(describe_os_error(e), EXIT_BAD_INPUT)


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="print the version and exit")) -> None:
    if version:
        typer.echo(f"llmdistill {__version__}")
        raise typer.Exit()


@app.command()
def run(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    force: list[str] = typer.Option([], "--force", help="rerun this stage (and the ones after it) even if done"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run every stage (generate, filter, train, eval); finished, unchanged stages are skipped."""
    _run("run", config, overrides, verbose, force=force)


def _stage_command(stage: str, doc: str):
    def command(
        config: str | None = typer.Argument(None, help=CONFIG_HELP),
        overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
        force: bool = typer.Option(False, "--force", help="rerun even if done"),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        _run(f"run_{stage}", config, overrides, verbose, force=force)  # api.run_filter, ...

    command.__doc__ = doc
    app.command(name=stage)(command)


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, _, count = text.partition("/")
    # ASCII digits only: str.isdigit() also passes "²" and "٣", which int() refuses or reads as another number
    digits = index.isascii() and count.isascii() and index.isdigit() and count.isdigit()
    if not digits or int(count) < 1 or int(index) >= int(count):
        _fail(f"--shard takes i/n with 0 <= i < n (e.g. 2/8), got {text!r}", EXIT_BAD_INPUT)
    return int(index), int(count)


@app.command()
def generate(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    force: bool = typer.Option(False, "--force", help="rerun even if done"),
    shard: str | None = typer.Option(None, "--shard", help="i/n: generate only shard i (0-based) of n into the "
                                     "shared run directory; finish with `llmdistill merge`"),
    executor: str | None = typer.Option(None, "--executor", help="local or ray: every shard as a task on a Ray "
                                        "cluster, then the merge (overrides generate.executor)"),
    address: str | None = typer.Option(None, "--address", help="the Ray cluster: auto, host:port, ray://host:port "
                                       "or local (overrides generate.ray_address; implies --executor ray)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Teacher completions with top-k log-probs for the prompts, in curriculum order."""
    import json

    if shard is not None and (executor == "ray" or address is not None):
        _fail("--shard runs one shard in this process, --executor ray runs them all on Ray: give one of them",
              EXIT_BAD_INPUT)
    flags = [f"generate.executor={executor or 'ray'}"] if executor or address else []
    flags += [f"generate.ray_address={json.dumps(address)}"] if address is not None else []  # a YAML string
    _run("run_generate", config, [*(overrides or []), *flags], verbose, force=force, shard=_parse_shard(shard))


@app.command()
def merge(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Finish a sharded generate: check that every planned sample is there exactly once, write the manifest."""
    _run("merge_shards", config, overrides, verbose)


_stage_command("annotate", "Re-score the generated text with a local teacher (top-k log-probs by teacher forcing).")


@app.command(name="filter")
def filter_(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    force: bool = typer.Option(False, "--force", help="rerun even if done"),
    executor: str | None = typer.Option(None, "--executor", help="local or ray: each part's hashes, signatures and "
                                        "embeddings as tasks on a Ray cluster (overrides filter.executor)"),
    address: str | None = typer.Option(None, "--address", help="the Ray cluster: auto, host:port, ray://host:port "
                                       "or local (overrides filter.ray_address; implies --executor ray)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Dedup and heuristic filters over the generated samples (removed rows keep their reason)."""
    import json

    flags = [f"filter.executor={executor or 'ray'}"] if executor or address else []
    flags += [f"filter.ray_address={json.dumps(address)}"] if address is not None else []  # a YAML string
    _run("run_filter", config, [*(overrides or []), *flags], verbose, force=force)


_stage_command("train", "Train the student (and the SFT baseline, if configured) on the filtered samples.")
_stage_command("eval", "Compare the trained students with the teacher on held-out prompts.")


@app.command()
def validate(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Check a config without loading any model: every error at once, exit code 2 if any."""
    cfg = _load(config, overrides)
    from llmdistill.pipeline import fingerprints, stage_status

    status = stage_status(cfg)
    typer.echo(f"config OK: run directory {cfg.run_dir}")
    for stage, fp in fingerprints(cfg).items():
        typer.echo(f"  {stage:<9} fingerprint {fp}  {status[stage]}")


EXIT_NO_FIT = 5  # `plan`: the estimate does not fit in --device-memory (schedulers gate on it)


@app.command()
def plan(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    sharding: str = typer.Option("none", "--sharding", help="none, ddp, fsdp or zero3 (fsdp/zero3 divide weights, "
                                 "gradients and optimizer states by --processes)"),
    processes: int = typer.Option(1, "--processes", help="training processes (devices)"),
    device_memory: str | None = typer.Option(None, "--device-memory", help="memory of one device, e.g. 80GiB or "
                                             "40GB: say whether it fits (exit 5 if not)"),
    as_json: bool = typer.Option(False, "--json", help="print the estimate as JSON"),
) -> None:
    """Estimate per-device training memory from the config (no weights load): weights, gradients, AdamW states,
    activations, loss chunks, a live teacher; with --device-memory, whether it fits and what to change."""
    cfg = _load(config, overrides)
    import json

    from llmdistill import api
    from llmdistill.errors import UserError
    from llmdistill.plan import print_plan

    try:
        out = api.plan_memory(cfg, sharding=sharding, processes=processes, device_memory=device_memory)
    except UserError as e:
        _fail(str(e), EXIT_BAD_INPUT)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
    else:
        print_plan(out)
    if out["fits"] is False:
        raise typer.Exit(EXIT_NO_FIT)


@app.command()
def prune(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    out: Path | None = typer.Option(None, "--out", help="student directory to write (default: <run>/pruned): a new "
                                    "or empty directory, or an earlier pruned student (its pruning.json), replaced"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --out that is not an earlier pruned "
                               "student (never the teacher, a run's outputs, or a directory holding the run or "
                               "config)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Prune the teacher into a student as train.student.prune says (depth by block influence, width by
    activation importance) and write it with its importance scores (pruning.json)."""
    _setup_logging(verbose)
    cfg = _load(config, overrides)
    from llmdistill.errors import UserError, describe_os_error
    from llmdistill.train.prune import prune_command

    path = config if config is not None and Path(config).exists() else None
    try:
        target, record = prune_command(cfg, out, force, path)
    except UserError as e:
        _fail(str(e), EXIT_BAD_INPUT)
    except OSError as e:
        _fail(describe_os_error(e), EXIT_BAD_INPUT)
    params = record["parameters"]
    typer.echo(f"pruned: layers {record['layers']} of {record['teacher_layers']}, MLP "
               f"{record['intermediate_size']['student']}, heads {record['attention_heads']['student']}, hidden "
               f"{record['hidden_size']['student']}: {params['student'] / 1e6:.1f}M of {params['teacher'] / 1e6:.1f}M "
               f"parameters -> {target}")


@app.command()
def inspect(
    directory: Path = typer.Argument(..., help="a run directory or a dataset directory (e.g. runs/demo/filter)"),
    n: int = typer.Option(3, "-n", help="samples to show"),
    removed: bool = typer.Option(False, "--removed", help="show the rows the filter removed, with reasons"),
    sample_id: str | None = typer.Option(None, "--id", help="show the sample whose id starts with this"),
    reason: str | None = typer.Option(None, "--reason", help="removed rows with this reason (or reason prefix, "
                                      "e.g. contamination); implies --removed"),
) -> None:
    """Print a run's stage status, or samples of a dataset (with removal reasons for removed rows)."""
    from llmdistill.errors import UserError
    from llmdistill.show import inspect_path

    try:
        inspect_path(directory, n=n, removed=removed, sample_id=sample_id, reason=reason)
    except UserError as e:
        _fail(str(e), EXIT_BAD_INPUT)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a run directory, e.g. runs/demo"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Write RUN_DIR/report/index.html (one self-contained page with plots) and RUN_DIR/report/metrics.json."""
    _setup_logging(verbose)
    from llmdistill import api
    from llmdistill.errors import UserError

    try:
        typer.echo(f"report: {api.write_report(run_dir)}")
    except UserError as e:  # not a run directory, a write that fails (disk full, ...)
        _fail(str(e), EXIT_BAD_INPUT)


@app.command()
def push(
    run_dir: Path = typer.Argument(..., help="a run directory (an LLM run or a distill-bert run)"),
    to: str = typer.Option(..., "--to", help="the Hub repo, owner/name (created if missing)"),
    student: str | None = typer.Option(None, "--student", help="the student to send: student (default) or "
                                       "sft_baseline"),
    dataset: str | None = typer.Option(None, "--dataset", help="send this stage's dataset instead: generate, "
                                       "annotate or filter"),
    public: bool = typer.Option(False, "--public", help="create the repo public (default: private)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be sent; send and write nothing"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Send a student (its card, safetensors weights, config and tokenizer) or a dataset (card, shards, manifest)
    to the Hugging Face Hub in one commit. Needs HF_TOKEN (or `hf auth login`); see docs/sharing.md."""
    _setup_logging(verbose)
    from llmdistill.errors import LockedError, UserError
    from llmdistill.push import push as push_run

    try:
        out = push_run(run_dir, to, student=student, dataset=dataset, public=public, dry_run=dry_run)
    except LockedError as e:
        _fail(str(e), EXIT_LOCKED)
    except UserError as e:
        _fail(str(e), EXIT_BAD_INPUT)
    visibility = "private" if out["private"] else "public"
    if dry_run:
        typer.echo(f"would send to {out['repo']} ({out['repo_type']}, {visibility} if created):")
    else:
        typer.echo(f"pushed {len(out['files'])} files to {out['repo']} (commit {out['commit']}; {visibility} if "
                   "created)")
    for rel, size in out["files"].items():
        typer.echo(f"  {rel}  {size} bytes")


@app.command()
def retrain(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """For schedulers: generate only new prompts, train from the promoted student, promote if the gates pass.

    One JSON line per stage on stdout. Exit codes: 0 promoted, 10 not promoted (a gate failed),
    11 nothing to do (no new prompts), 2 bad input, 3 another retrain holds the lock, 1 failure."""
    _setup_logging(verbose)
    cfg = _load(config, overrides)
    from llmdistill.retrain.run import retrain as run_retrain

    raise typer.Exit(run_retrain(cfg))


@app.command()
def rollback(
    config: str | None = typer.Argument(None, help=CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Point the promoted student back at the one promoted before it (the history is kept)."""
    cfg = _load(config, overrides)
    from llmdistill.errors import LockedError, UserError
    from llmdistill.retrain.run import rollback as run_rollback

    try:
        restored = run_rollback(cfg)
    except LockedError as e:
        _fail(str(e), EXIT_LOCKED)
    except UserError as e:
        _fail(str(e), EXIT_BAD_INPUT)
    typer.echo(f"rolled back: promoted student is now {restored['student']} (promoted {restored['promoted_at']})")


@app.command(name="distill-bert")
def distill_bert(
    config: str = typer.Argument(..., help="a BERT distillation config, e.g. configs/bert-kd.yaml"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides, e.g. phases.0.max_steps=10"),
    force: bool = typer.Option(False, "--force", help="rerun even if the run is done"),
    validate_only: bool = typer.Option(False, "--validate", help="check the config, load no model"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """BERT-style distillation: fine-tune/load a teacher, distil a student, evaluate, export ONNX + int8."""
    _setup_logging(verbose)
    from llmdistill import api
    from llmdistill.config import ConfigError
    from llmdistill.errors import LockedError, UserError

    try:
        cfg = api.load_bert_config(config, overrides)
    except ConfigError as e:
        _config_errors(e)
    if validate_only:
        typer.echo(f"config OK: run directory {cfg.run_dir}")
        return
    try:
        metrics = api.distill_bert(cfg, force=force).metrics
    except LockedError as e:
        _fail(str(e), EXIT_LOCKED)
    except UserError as e:
        _fail(str(e), EXIT_BAD_INPUT)
    test = metrics["test"]
    typer.echo(f"{cfg.run_dir}: " + ", ".join(f"{k} acc {v['accuracy']:.4f}" for k, v in test.items()))


@app.command(name="serve-bert")
def serve_bert(
    run_dir: Path = typer.Argument(..., help="a finished distill-bert run directory"),
    model: str | None = typer.Option(None, "--model", help="int8 (ONNX int8), fp32 (ONNX) or torch "
                                     "(default int8)"),
    host: str | None = typer.Option(None, "--host", help="address to listen on (default 127.0.0.1: this machine "
                                    "only; 0.0.0.0: every interface)"),
    port: int | None = typer.Option(None, "--port", help="TCP port (default 8000; 0: any free port)"),
    timeout: float | None = typer.Option(None, "--timeout", help="seconds a request's headers, and then its body, "
                                         "may take to arrive (default 10): then 408 and the connection closes"),
    batching: bool | None = typer.Option(None, "--batching/--no-batching", help="one model call for requests that "
                                         "arrive together (default on)"),
    batch_wait_ms: float | None = typer.Option(None, "--batch-wait-ms", help="with --batching, how long a model "
                                               "call waits for more requests (default 0: it takes those that "
                                               "queued while the model was busy)"),
    threads: int | None = typer.Option(None, "--threads", help="onnxruntime / torch threads per model call "
                                       "(default 1)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every request"),
) -> None:
    """Serve a distilled classifier: POST /predict {"texts": [...]}, GET /health (503 while the model loads).
    Limits and guarantees: docs/bert.md and docs/robustness.md."""
    _setup_logging(verbose)
    logging.getLogger("uvicorn").setLevel(logging.DEBUG if verbose else logging.WARNING)
    from pydantic import ValidationError

    from llmdistill.bert.serve import PredictionServer, ServeSettings, check_run
    from llmdistill.errors import UserError

    options = {"model": ("--model", model), "host": ("--host", host), "port": ("--port", port),
               "timeout_s": ("--timeout", timeout), "batching": ("--batching", batching),
               "batch_wait_ms": ("--batch-wait-ms", batch_wait_ms),
               "threads": ("--threads", threads)}
    try:
        settings = ServeSettings(**{k: v for k, (_, v) in options.items() if v is not None})
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        _fail(f"{options[err['loc'][0]][0]}: {err['msg']} (got {err['input']!r})", EXIT_BAD_INPUT)
    try:
        run = check_run(run_dir, settings.model)  # everything that can be checked before the port is bound
        server = PredictionServer(lambda: run.load(settings.threads), settings, verbose)
        server.bind()
        typer.echo(f"serving {run_dir} on {server.url}/predict (GET /health: 503 until the model is loaded)")
        server.run()
    except UserError as e:
        _fail(str(e), EXIT_BAD_INPUT)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
