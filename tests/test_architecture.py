"""The layering rules of DESIGN.md, checked on the source with `ast` (nothing is imported):

  * no import cycle among rq_jax modules, counting the lazy imports inside functions too (so
    `evaluate` <-> `generate_eval`, which imported each other's private helpers lazily, would fail);
  * no module imports a `_private` name of another rq_jax module (`from m import _x` or `m._x`);
  * nothing but rq_jax/train.py imports rq_jax.trainers (tests excepted).
"""

import ast
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "rq_jax"

# Private names still crossing a module boundary, as (importing module, imported module, name). Empty: keep it so.
PRIVATE_ALLOWED: set[tuple[str, str, str]] = set()
# Files outside rq_jax/train.py that may import the trainers: compile_check (it compiles the trainers' programs),
# benchmarks of the real train steps, and the one that writes runs laid out exactly as the trainers save them.
TRAINER_IMPORT_ALLOWED = {"rq_jax/train.py", "rq_jax/compile_check.py", "benchmarks/train_memory.py",
                          "benchmarks/device_check.py", "benchmarks/sample_startup.py", "benchmarks/data_throughput.py"}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, tuple[pathlib.Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _sources()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module of a `from ... import` (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    path, _ = MODULES[module]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, nodes: list[ast.AST]) -> list[tuple[str, str | None, str]]:
    """(imported module, imported non-module name or None, the local name bound) of the import statements."""
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, None, a.asname or a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(module, node)
            for a in node.names:
                sub = f"{src}.{a.name}"
                out.append((sub, None, a.asname or a.name) if sub in MODULES else (src, a.name, a.asname or a.name))
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the rq_jax modules it imports, at import time or lazily inside functions (both are dependencies)."""
    graph = {}
    for module, (_, tree) in MODULES.items():
        graph[module] = {m for m, _, _ in _imports(module, list(ast.walk(tree))) if m in MODULES and m != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_rq_jax():
    graph = import_graph()
    assert {"rq_jax.runs", "rq_jax.eval.generate", "rq_jax.evaluate"} <= set(graph)
    assert "rq_jax.runs" in graph["rq_jax.eval.generate"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def private_imports() -> set[tuple[str, str, str]]:
    """(module, other rq_jax module, private name) for `from other import _name` and `alias._name` uses."""
    found = set()
    for module, (_, tree) in MODULES.items():
        nodes = list(ast.walk(tree))
        aliases = {}  # local names bound to other rq_jax modules
        for target, name, local in _imports(module, nodes):
            if not target.startswith("rq_jax") or target == module:
                continue
            if name is None:
                if local != "rq_jax":
                    aliases[local] = target
            elif name.startswith("_") and not name.startswith("__"):
                found.add((module, target, name))
        for node in nodes:
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.add((module, aliases[node.value.id], node.attr))
    return found


def test_no_private_name_crosses_a_module_boundary():
    found = private_imports()
    assert found <= PRIVATE_ALLOWED, "private names imported across modules: " + ", ".join(
        f"{m} uses {t}.{n}" for m, t, n in sorted(found - PRIVATE_ALLOWED))


def _notebook_code(path: pathlib.Path) -> str:
    """The code cells as one Python source, shell (!) and magic (%) lines replaced by `pass`."""
    cells = json.loads(path.read_text())["cells"]
    lines = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()]
    return "\n".join(line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!"))
                     else line for line in lines)


def test_only_train_py_imports_the_trainers():
    files = {p: p.read_text() for p in [*PACKAGE.rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]}
    files.update({p: _notebook_code(p) for p in (REPO / "notebooks").glob("*.ipynb")})
    offenders = []
    for path, text in files.items():
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("rq_jax/trainers/") or rel in TRAINER_IMPORT_ALLOWED:
            continue
        module = _module_name(path) if path.suffix == ".py" and rel.startswith("rq_jax/") else ""
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(module, node) if node.level else (node.module or "")
                names = [src] + [f"{src}.{a.name}" for a in node.names]
            if any(n == "rq_jax.trainers" or n.startswith("rq_jax.trainers.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, "imports of rq_jax.trainers outside rq_jax/train.py: " + ", ".join(offenders)
