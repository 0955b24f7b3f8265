"""Imports flow one way, from the stages down to the shared core (no import cycles).

    launch, sweep
      -> config (composes the section dataclasses; no stage code)
      -> stage packages: train, synth, serve, bench (and the `stages` registry, which names them
         and imports one only to run it)
      -> core: runtime, model, tokenizer, data, checkpoint, decoding
      -> errors

Each stage family owns its config section in a leaf `PACKAGE/config.py` of plain dataclasses; code
below the config layer refers to the root `Config` only in type hints (`if TYPE_CHECKING:`).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from helpers import REPO_ROOT, last_json_line, run_in_subprocess

PACKAGE_DIR = REPO_ROOT / "jz3_jax"
CORE = ("runtime", "model", "tokenizer", "data", "checkpoint", "decoding", "prompts")
STAGE_PACKAGES = ("train", "synth", "serve", "bench", "corpus", "distill", "influence", "eval")
# Modules the core must never import at module level: the config layer, the launcher and the
# stage registry above it, and the stage packages.
FORBIDDEN_IN_CORE = ("jz3_jax.config", "jz3_jax.launch", "jz3_jax.sweep", "jz3_jax.stages",
                     *(f"jz3_jax.{p}" for p in STAGE_PACKAGES))
# Where `jz3_jax.config` may be imported at run time (everything else: type hints only).
CONFIG_USERS = ("config", "launch.py", "sweep.py")
# Where the root `Config` may be named at all: the config layer, the launcher, the sweep and the
# pipeline (which composes every stage's config). A stage receives its own typed spec.
ROOT_CONFIG_USERS = (*CONFIG_USERS, "pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE_DIR.rglob("*.py"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of a `from ... import` (relative imports resolved against `path`)."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(path: Path, module_level_only: bool, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import in `path` (or in `source`, read as if it were `path`); with
    `module_level_only`, only those that run when the module is imported (not inside functions or
    classes, not under `if TYPE_CHECKING:`)."""
    found: list[tuple[int, str]] = []

    def names(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = _absolute(path, node)  # `from a.b import c`: a.b, and a.b.c in case c is a module
        return [base, *(f"{base}.{alias.name}" for alias in node.names)]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.extend((node.lineno, name) for name in names(node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not module_level_only:
                    visit(node.body)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                if not module_level_only:
                    visit(node.body)
                visit(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [])

    visit(ast.parse(path.read_text() if source is None else source, filename=str(path)).body)
    return found


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def offending_imports(path: Path, module_level_only: bool, bad: tuple[str, ...]) -> list[str]:
    """One line per import statement of `path` that names a module under one of `bad`."""
    lines: dict[int, str] = {}
    for line, name in imported_modules(path, module_level_only):
        if line not in lines and any(_matches(name, prefix) for prefix in bad):
            lines[line] = f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
    return list(lines.values())


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module, imported first (all jz3_jax modules dropped from sys.modules in between),
    imports cleanly: an import cycle shows up as an ImportError for whichever module enters it first."""
    code = """
        import importlib, json, sys, traceback
        failures = {}
        for name in json.loads(sys.argv[1]):
            for loaded in [m for m in sys.modules if m == "jz3_jax" or m.startswith("jz3_jax.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failures[name] = traceback.format_exc(limit=-3)
        print(json.dumps(failures))
    """
    modules = all_modules()
    assert len(modules) > 50 and "jz3_jax.config.schema" in modules
    failures = last_json_line(run_in_subprocess(code, args=[json.dumps(modules)], timeout=600))
    assert not failures, "\n".join(f"{name}:\n{tb}" for name, tb in failures.items())


def test_config_layer_imports_no_stage_code():
    """`import jz3_jax.config` (the launcher's --print-config path) loads only the section
    dataclasses: no JAX, and no stage or core code beyond the leaf config modules."""
    code = """
        import json, sys
        import jz3_jax.config
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("jz3_jax", "jax", "flax"))))
    """
    loaded = last_json_line(run_in_subprocess(code))
    assert "jz3_jax.config.schema" in loaded
    assert not [m for m in loaded if not m.startswith("jz3_jax")], loaded  # no jax, no flax
    stage_code = [m for m in loaded if m.split(".")[1:2] in [[p] for p in STAGE_PACKAGES]
                  and m.split(".")[2:] not in ([], ["config"], ["errors"])]
    assert not stage_code, stage_code


def test_core_never_imports_config_stages_or_launcher():
    problems = []
    for package in CORE:
        for path in sorted((PACKAGE_DIR / package).rglob("*.py")):
            problems += offending_imports(path, True, FORBIDDEN_IN_CORE)
    assert not problems, "\n".join(problems)


def test_no_core_or_stage_module_names_the_root_config():
    """Not even in a type hint or inside a function: core packages and stages never see the root
    `Config` (a stage gets a spec of its own sections, `stages/registry.py`)."""
    problems = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path.relative_to(PACKAGE_DIR).parts[0] not in ROOT_CONFIG_USERS:
            problems += offending_imports(path, False, ("jz3_jax.config",))
    assert not problems, "\n".join(problems)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (module level, functions, TYPE_CHECKING).
    `from package import module` is an edge to the module (Python initialises the package either way)."""
    modules = set(all_modules())

    def owner(name: str) -> str:
        while name and name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]  # `from a.b import f`: the module a.b
        return name

    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = module_name(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(path, node)
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else owner(base) for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycle_even_counting_imports_inside_functions():
    assert not cycles(import_graph()), cycles(import_graph())


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_assigns_into_another_module_at_run_time():
    """No monkey-patching inside the package: an attribute of an imported project module is never assigned."""
    problems = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name.split(".")[0] for a in node.names if _matches(a.name, "jz3_jax")}
            elif isinstance(node, ast.ImportFrom) and _matches(_absolute(path, node), "jz3_jax"):
                aliases |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AugAssign) else [])
            for target in targets:
                base = target
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(target, ast.Attribute) and isinstance(base, ast.Name) and base.id in aliases:
                    problems.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} assigns {ast.unparse(target)}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases):
                problems.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} setattr on {node.args[0].id}")
    assert not problems, "\n".join(problems)


def test_config_is_a_type_hint_only_below_the_config_layer():
    """Outside the config package and the launcher, `jz3_jax.config` is imported only under
    `if TYPE_CHECKING:`: a module reads its own section class from its package's `config.py`."""
    problems = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR)
        if relative.parts[0] not in CONFIG_USERS:
            problems += offending_imports(path, True, ("jz3_jax.config",))
    assert not problems, "\n".join(problems)


def test_only_the_config_package_imports_the_schema():
    """Sections are imported from their owners (`jz3_jax.runtime.config`, ...), `Config` from `jz3_jax.config`."""
    problems = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path.relative_to(PACKAGE_DIR).parts[0] != "config":
            problems += offending_imports(path, False, ("jz3_jax.config.schema",))
    assert not problems, "\n".join(problems)


def test_section_config_modules_are_leaves():
    """A `PACKAGE/config.py` holds dataclasses only: of the project it imports nothing but other
    section modules and the (leaf) error classes, so the config layer never pulls in stage code."""
    leaf = re.compile(r"jz3_jax(\.\w+)?\.(config|errors)")
    paths = sorted(PACKAGE_DIR.glob("*/config.py"))
    assert {p.parent.name for p in paths} >= {"runtime", "train", "data", "decoding", "serve", "synth",
                                               "checkpoint", "bench", "model"}
    problems = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                modules = [_absolute(path, node)]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            problems += [f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {m}" for m in modules
                         if _matches(m, "jz3_jax") and not leaf.fullmatch(m)]
    assert not problems, "\n".join(problems)


def test_the_scan_sees_the_imports_it_checks():
    """The AST scan is not vacuous: it finds module-level imports (also nested in try, relative ones
    resolved) and skips function bodies and TYPE_CHECKING blocks only where asked."""
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from jz3_jax.config.schema import Config\n"
        "try:\n    import jz3_jax.stages\nexcept ImportError:\n    pass\n"
        "from .sources import read_records\n"
        "if TYPE_CHECKING:\n    from jz3_jax.train import trainer\n"
        "def f():\n    from jz3_jax.serve import server\n"
    )
    path = PACKAGE_DIR / "data" / "probe.py"  # a made-up module of the data package, never written
    top = {name for _, name in imported_modules(path, True, source)}
    everything = {name for _, name in imported_modules(path, False, source)}
    assert {"jz3_jax.config.schema", "jz3_jax.stages", "jz3_jax.data.sources"} <= top
    assert not any(_matches(name, "jz3_jax.train") or _matches(name, "jz3_jax.serve") for name in top)
    assert {"jz3_jax.train", "jz3_jax.train.trainer", "jz3_jax.serve.server"} <= everything
