"""The layering, read from the source with ast (nothing is imported): stages never import each other nor the
runner (pipeline.py); what they share lives below them and imports no stage; no import circle between the
top-level parts of llmdistill. Imports inside functions count as well. And no module is over MAX_LINES lines
(CONTRIBUTING.md): a module that grows past it is split by concern."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "llmdistill"
STAGES = {"generate", "annotate", "filter", "train", "evaluate", "retrain", "bert"}
SHARED = {"runner", "teachers", "prompts", "records", "store", "models", "config", "losses", "graders",
          "architecture", "credentials", "cards", "tracking", "ray_utils"}  # below
RUNNER = "pipeline"
MAY_IMPORT = {"retrain": {"pipeline", "report"}}  # retrain runs the pipeline and writes a report

MAX_LINES = 600
# Known edges that are still there, each to be deleted once it is gone (the test then says it is stale):
KNOWN: set[tuple[str, str]] = set()


def part(name: str) -> str:
    """'llmdistill.generate.stage' -> 'generate' (the top-level module or package it belongs to)."""
    return name.split(".")[1]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """The llmdistill modules (or names in them) that the module `name` imports, anywhere in its body."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base == "llmdistill":  # `from llmdistill import x`: the module llmdistill.x (or a name of it)
                found.update(f"{base}.{a.name}" for a in node.names)
            else:
                found.add(base)
    return {f for f in found if f.startswith("llmdistill.")}


def edges() -> set[tuple[str, str]]:
    mods = modules()
    known_parts = {part(m) for m in mods if m != "llmdistill"}
    return {(m, i) for m, path in mods.items() if m != "llmdistill" for i in imports(m, path)
            if part(i) in known_parts}


def forbidden(src: str, dst: str) -> bool:
    a, b = part(src), part(dst)
    if a == b:
        return False
    if a in STAGES:
        return (b in STAGES or b == RUNNER) and b not in MAY_IMPORT.get(a, ())
    if a in SHARED:
        return b in STAGES or b == RUNNER
    return False


def test_stages_import_no_other_stage_nor_the_runner_and_shared_parts_import_no_stage():
    found = edges()
    bad = sorted(e for e in found if forbidden(*e) and e not in KNOWN)
    assert not bad, "imports across the layering:\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)
    stale = sorted(KNOWN - found)
    assert not stale, f"these known edges are gone: delete them from KNOWN: {stale}"


def test_only_the_api_the_cli_and_retrain_import_the_runner():
    importers = {part(a) for a, b in edges() if part(b) == RUNNER and part(a) != RUNNER}
    assert importers <= {"api", "cli", "retrain"}, importers


def test_no_import_circle_between_the_top_level_parts():
    graph: dict[str, set[str]] = {}
    for a, b in edges():
        if part(a) != part(b) and (a, b) not in KNOWN:
            graph.setdefault(part(a), set()).add(part(b))
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_no_module_is_over_the_line_limit():
    sizes = {m: len(path.read_text(encoding="utf-8").splitlines()) for m, path in modules().items()}
    long = sorted((n, m) for m, n in sizes.items() if n > MAX_LINES)
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): " + ", ".join(
        f"{m} ({n})" for n, m in long)
    assert sizes["llmdistill.teachers.api"] > 100  # the walk reads the package (sub-packages included)


def test_the_check_sees_what_it_must():
    """The walker finds lazy imports and `from llmdistill import x`, and the rules catch a stage edge."""
    found = edges()
    assert ("llmdistill.filter.scorers", "llmdistill.teachers") in found  # inside a function
    assert ("llmdistill.retrain.run", "llmdistill.store") in found  # from llmdistill import store
    assert forbidden("llmdistill.annotate.stage", "llmdistill.generate.stage")
    assert forbidden("llmdistill.generate.stage", "llmdistill.pipeline")
    assert forbidden("llmdistill.teachers.hf", "llmdistill.train.losses")
    assert not forbidden("llmdistill.retrain.run", "llmdistill.pipeline")


def test_the_teacher_signal_is_decided_in_one_place():
    """Where a batch's teacher signal comes from is decided once, in train/sources.py (with the config's
    predicates): the trainer knows no signal class, and no other module asks which signal or whether a term is CE."""
    trainer = imports("llmdistill.train.trainer", modules()["llmdistill.train.trainer"])
    assert not trainer & {"llmdistill.train.signals", "llmdistill.train.cross_tokenizer"}, trainer
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if not name.startswith("llmdistill.config") and name != "llmdistill.train.sources":
            assert "teacher_signal ==" not in text and "teacher_signal !=" not in text, name
        if (name.startswith("llmdistill.train") and name != "llmdistill.train.objective") or name == "llmdistill.plan":
            for pattern in ('!= "ce"', '== "ce"', "!= 'ce'", "== 'ce'"):
                assert pattern not in text, f"{name}: {pattern} (use LossTerm.is_divergence / config.needs_teacher)"
