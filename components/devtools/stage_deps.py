"""Each DVC stage's code deps, computed from the imports of the code the stage runs.

DVC reruns a stage when one of its deps changes, so the code entries of a stage's ``deps:`` in
dvc.yaml must name every project file the stage executes, and nothing more: a missing one skips a
stage whose code changed (the dataset the trainer reads), an extra one reruns a stage for nothing.

What ``mesa stage NAME`` (every stage's cmd) runs:

- ``flows/settings.py``: ``configure_environment()`` and ``project_root()`` run before the stage and
  set its environment and its folder;
- ``flows/stages/NAME.py``, reached through ``flows/stages/__init__.py`` (``run_stage``), and every
  project module they import;
- the processes a stage starts with ``python -m MODULE`` (train: ``accelerate launch ... -m
  flows.train_entry``), and every project module those import.

``flows/cli.py`` is not a dep. Its ``stage`` command only hands NAME and ``project_root()`` to
``run_stage``; the modules it imports at start-up (serve, deploy, infra, ablation, dev ...) define
other commands, which a stage never calls. Counting them would rerun every stage whenever the CLI
gains an unrelated command. ``cli_startup_files`` lists them (a stage process does load them).

Imports are followed statically (``ast``) everywhere in a module: at module level, inside functions
(the code imports lazily), under try/except; not under ``if TYPE_CHECKING:``, which never runs.
Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so package inits count.
An import through ``importlib.import_module`` with a computed name needs a rule in
``DYNAMIC_IMPORTS``; one without a rule is an error, never a silently missing dep. Following every
function-level import over-approximates a little: a lazily imported module counts even on a code
path that a given configuration never reaches.

Only code entries (paths under ``components/`` or ``flows/`` that are modules or folders) are
computed; data deps (``data/...``, ``${data.raw_dir}``) and other files (``infra/accelerate``) are
left as they are, in their order.
"""
from __future__ import annotations

import ast
import functools
import io
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.layout import DVC_FILE

PROJECT_PACKAGES = ("components", "flows")
STAGE_CMD = ("mesa", "stage")
# What `mesa stage NAME` runs around the stage's own module (see flows/cli.py in the docstring).
STAGE_RUNNER_MODULES = ("flows.settings", "flows.stages")
# importlib.import_module(f"...") templates ("{}" per formatted part) -> the module imported when
# stage `stage` runs. flows/stages/__init__.py loads the stage's flow with f"flows.stages.{name}".
DYNAMIC_IMPORTS = {"flows.stages.{}": "flows.stages.{stage}"}


class StageDepsError(Exception):
    """The code or dvc.yaml cannot be analysed as it is (the message says where and what to do)."""


@dataclass
class Drift:
    """How one stage's code deps in dvc.yaml differ from the computed ones."""

    stage: str
    missing: list[str] = field(default_factory=list)  # run by the stage, not a dep: a change would not rerun it
    extra: list[str] = field(default_factory=list)  # a dep the stage does not run (or a folder it runs only part of)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra)


# --- following imports ------------------------------------------------------------------------

def module_file(root: str | Path, module: str) -> Path | None:
    """The file that runs when project module `module` is imported (a package's __init__.py), else None."""
    parts = module.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = Path(root).joinpath(*parts)
    for candidate in (base / "__init__.py", base.parent / f"{parts[-1]}.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    """"a.b.c" -> ["a", "a.b", "a.b.c"]: importing a module runs its packages' __init__ first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.lru_cache(maxsize=1024)
def _parse(path: str, mtime_ns: int) -> ast.Module:
    del mtime_ns  # part of the cache key only: an edited file is parsed again
    return ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportFinder(ast.NodeVisitor):
    """The project modules one module imports (or starts with `python -m`), with their packages."""

    def __init__(self, root: Path, module: str, path: Path, stage: str | None, import_time_only: bool):
        self.root, self.module, self.path = root, module, path
        self.stage, self.import_time_only = stage, import_time_only
        self.found: set[str] = set()

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(self.root).as_posix()}:{getattr(node, 'lineno', '?')}"

    def add(self, module: str, node: ast.AST) -> None:
        if module.split(".")[0] not in PROJECT_PACKAGES:
            return
        for name in _with_parents(module):
            if module_file(self.root, name) is None:
                raise StageDepsError(f"{self.where(node)} imports {module}, but {name} is neither a module "
                                     f"nor a package under {self.root}: fix the import")
            self.found.add(name)

    # Function bodies run only when called; at import time only decorators and defaults run.
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if not self.import_time_only:
            self.generic_visit(node)
            return
        for expr in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        if not self.import_time_only:
            self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # for type checkers only: never runs
            for statement in node.orelse:
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.absolute(node.module, node.level, node)
        self.add(base, node)
        for alias in node.names:
            # `from pkg import name` imports pkg/name.py when it is a submodule, not an attribute.
            if alias.name != "*" and module_file(self.root, f"{base}.{alias.name}") is not None:
                self.add(f"{base}.{alias.name}", node)

    def absolute(self, module: str | None, level: int, node: ast.AST) -> str:
        if level == 0:
            return module or ""
        package = self.module.split(".")
        if self.path.name != "__init__.py":
            package = package[:-1]
        if level - 1 >= len(package):
            raise StageDepsError(f"{self.where(node)}: relative import beyond the top-level package")
        base = package[:len(package) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        dynamic = (isinstance(func, ast.Name) and func.id in ("import_module", "__import__")) or (
            isinstance(func, ast.Attribute) and func.attr == "import_module"
            and isinstance(func.value, ast.Name) and func.value.id == "importlib")
        if dynamic and node.args:
            self.dynamic_import(node.args[0], node)
        self.generic_visit(node)

    def dynamic_import(self, arg: ast.expr, node: ast.Call) -> None:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            if arg.value.startswith("."):
                raise StageDepsError(f"{self.where(node)}: a relative importlib.import_module is not followed; "
                                     "import the module by its full name")
            self.add(arg.value, node)
            return
        if isinstance(arg, ast.JoinedStr):
            template = "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in arg.values)
            if template.split(".")[0] not in PROJECT_PACKAGES:
                return  # a third-party module: not a code dep
            if template in DYNAMIC_IMPORTS:
                for module in self.resolve_template(template, node):
                    self.add(module, node)
                return
        raise StageDepsError(f"{self.where(node)}: cannot tell statically which module this import loads; "
                             "import a literal module name, or add its f-string template to DYNAMIC_IMPORTS "
                             "in components/devtools/stage_deps.py")

    def resolve_template(self, template: str, node: ast.AST) -> list[str]:
        if self.stage is not None:
            module = DYNAMIC_IMPORTS[template].format(stage=self.stage)
            if module_file(self.root, module) is None:
                raise StageDepsError(f"{self.where(node)} imports {module} for stage {self.stage!r}, "
                                     f"which does not exist: add flows/stages/{self.stage}.py")
            return [module]
        # Outside a stage: any module the template can name (its last part is the formatted one).
        package, _, last = template.rpartition(".")
        folder = module_file(self.root, package)
        if last != "{}" or folder is None or folder.name != "__init__.py":
            raise StageDepsError(f"{self.where(node)}: template {template!r} needs a stage to resolve")
        return [f"{package}.{p.stem}" for p in sorted(folder.parent.glob("*.py")) if p.stem != "__init__"]

    # `[sys.executable, "-m", "flows.train_entry", ...]`: a process that runs a project module.
    def visit_List(self, node: ast.List | ast.Tuple) -> None:
        for flag, target in zip(node.elts, node.elts[1:]):
            if (isinstance(flag, ast.Constant) and flag.value == "-m" and isinstance(target, ast.Constant)
                    and isinstance(target.value, str) and module_file(self.root, target.value) is not None):
                self.add(target.value, node)
        self.generic_visit(node)

    visit_Tuple = visit_List


def direct_imports(root: str | Path, module: str, *, stage: str | None = None,
                   import_time_only: bool = False) -> set[str]:
    """The project modules that `module` itself imports or launches (with their packages)."""
    root = Path(root)
    path = module_file(root, module)
    if path is None:
        raise StageDepsError(f"{module} is not a module under {root}")
    finder = _ImportFinder(root, module, path, stage, import_time_only)
    finder.visit(_parse(str(path), path.stat().st_mtime_ns))
    return finder.found


def project_imports(root: str | Path, entries: Iterable[str], *, stage: str | None = None,
                    import_time_only: bool = False) -> dict[str, Path]:
    """Every project module that running `entries` imports, transitively: {module: file}."""
    root = Path(root)
    todo = [name for entry in entries for name in _with_parents(entry)]
    seen: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(root, module)
        if path is None:
            raise StageDepsError(f"{module} is not a module under {root}")
        seen[module] = path
        todo.extend(direct_imports(root, module, stage=stage, import_time_only=import_time_only) - set(seen))
    return seen


def _relative(root: Path, paths: Iterable[Path]) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths}


def stage_code_deps(root: str | Path, stage: str) -> list[str]:
    """The project files `mesa stage STAGE` runs: the stage's own module first, then by path."""
    root = Path(root)
    own = f"flows.stages.{stage}"
    if module_file(root, own) is None:
        raise StageDepsError(f"stage {stage!r}: flows/stages/{stage}.py does not exist")
    files = _relative(root, project_imports(root, [*STAGE_RUNNER_MODULES, own], stage=stage).values())
    first = f"flows/stages/{stage}.py"
    return [first, *sorted(files - {first})]


def cli_startup_files(root: str | Path) -> set[str]:
    """The project files `mesa` imports before running any command (not deps: see the docstring)."""
    root = Path(root)
    return _relative(root, project_imports(root, ["flows.cli"], import_time_only=True).values())


# --- dvc.yaml ----------------------------------------------------------------------------------

def stage_command_name(stage: str, definition: Any) -> str:
    """The NAME of a dvc.yaml stage whose cmd is `mesa stage NAME` (what the analysis can follow)."""
    cmd = definition.get("cmd") if isinstance(definition, dict) else None
    parts = shlex.split(cmd) if isinstance(cmd, str) else []
    if len(parts) != 3 or tuple(parts[:2]) != STAGE_CMD:
        raise StageDepsError(f"{DVC_FILE} stage {stage!r}: cmd {cmd!r} is not `mesa stage NAME`; "
                             "only such stages have code deps that can be computed")
    return parts[2]


def is_code_entry(entry: Any, root: str | Path) -> bool:
    """A dep that names project code: a module or a folder under components/ or flows/."""
    if not isinstance(entry, str) or "${" in entry:
        return False
    path = Path(entry)
    if not path.parts or path.parts[0] not in PROJECT_PACKAGES:
        return False
    return path.suffix == ".py" or (Path(root) / path).is_dir() or not path.suffix


def computed_deps(root: str | Path, dvc_text: str | None = None) -> dict[str, list[str]]:
    """{dvc.yaml stage: its computed code deps} for every stage in dvc.yaml (or in `dvc_text`)."""
    from ruamel.yaml import YAML

    root = Path(root)
    text = dvc_text if dvc_text is not None else (root / DVC_FILE).read_text()
    stages = (YAML(typ="safe", pure=True).load(text) or {}).get("stages") or {}
    return {name: stage_code_deps(root, stage_command_name(name, definition)) for name, definition in stages.items()}


def compare(root: str | Path, entries: Iterable[Any], computed: Iterable[str], stage: str = "") -> Drift:
    """How a stage's deps entries cover its computed code files.

    A module entry must be run by the stage; a folder entry is accepted only when the stage runs
    every module in it (then it covers them all).
    """
    root = Path(root)
    computed = set(computed)
    drift, covered = Drift(stage), set()
    for entry in entries:
        if not is_code_entry(entry, root):
            continue
        if entry.endswith(".py"):
            if entry in computed:
                covered.add(entry)
            else:
                drift.extra.append(entry)
            continue
        inside = _relative(root, (p for p in (root / entry).rglob("*.py") if "__pycache__" not in p.parts))
        if inside and inside <= computed:
            covered |= inside
        else:
            drift.extra.append(entry)
    drift.missing = sorted(computed - covered)
    return drift


def check_deps(root: str | Path) -> list[Drift]:
    """Every stage whose dvc.yaml code deps differ from the computed ones (empty: all agree)."""
    from ruamel.yaml import YAML

    root = Path(root)
    stages = (YAML(typ="safe", pure=True).load((root / DVC_FILE).read_text()) or {}).get("stages") or {}
    computed = computed_deps(root)
    drifts = [compare(root, definition.get("deps") or [], computed[name], name) for name, definition in stages.items()]
    return [drift for drift in drifts if drift]


def _round_trip_yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, key order and flow style stay as written
    yaml.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's layout (and `dvc stage add`'s)
    yaml.width = 4096  # never re-wrap long lines
    yaml.preserve_quotes = True
    return yaml


def _replace_code_entries(deps: Any, code: list[str], root: Path) -> bool:
    """Put `code` in place of a deps list's code entries (where the first one was); True if it changed."""
    old = list(deps)
    positions = [i for i, entry in enumerate(old) if is_code_entry(entry, root)]
    at = positions[0] if positions else len(old)
    kept = [i for i in range(len(old)) if i not in positions]
    index_of = {old[i]: i for i in positions}
    # (entry, its index in the old list or None) in the new order: data deps keep their places.
    new = [(old[i], i) for i in kept if i < at] + [(e, index_of.get(e)) for e in code] + [
        (old[i], i) for i in kept if i > at]
    if [entry for entry, _ in new] == old:
        return False
    comments = dict(deps.ca.items)
    last = len(old) - 1
    deps.ca.items.clear()
    deps.clear()
    deps.extend(entry for entry, _ in new)
    for position, (_, index) in enumerate(new):
        if index is not None and index != last and index in comments:
            deps.ca.items[position] = comments[index]
    # The last item's comment also holds the comment lines after the list: it stays last.
    if last in comments and new:
        deps.ca.items[len(new) - 1] = comments[last]
    return True


def rewrite_code_deps(text: str, computed: dict[str, list[str]], root: str | Path) -> tuple[str, list[str]]:
    """dvc.yaml `text` with each stage's code deps set to `computed`; also the stages that changed."""
    yaml = _round_trip_yaml()
    document = yaml.load(text)
    changed = []
    for name, definition in (document.get("stages") or {}).items():
        if name not in computed:
            continue
        if "deps" not in definition:
            from ruamel.yaml.comments import CommentedSeq

            definition["deps"] = CommentedSeq()
        if _replace_code_entries(definition["deps"], computed[name], Path(root)):
            changed.append(name)
    if not changed:
        return text, []
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue(), changed


def write_deps(root: str | Path) -> list[str]:
    """Rewrite dvc.yaml's code deps from the code (atomically, comments kept); the stages changed."""
    from components.atomic import write_text_atomic

    root = Path(root)
    path = root / DVC_FILE
    text = path.read_text()
    new_text, changed = rewrite_code_deps(text, computed_deps(root, text), root)
    if changed:
        write_text_atomic(path, new_text)
    return changed
