"""The package's layers as the README draws them: no import circle between modules
(imports inside functions count too), and every arrow pointing down: the format knows
nothing of the client, the server or the tracer; the client nothing of the server, the
tracer or the commands; the server nothing of the client or the tracer."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "parrot_cvmfs"

# room -> the rooms it must not import
FORBIDDEN = {
    "format": {"client", "server", "tracer", "container", "commands", "cli", "demo"},
    "client": {"server", "tracer", "container", "commands", "cli", "demo"},
    # the container view (mounts, image, overlay) sits below the tracer, above the client
    "container": {"server", "tracer", "commands", "cli", "demo"},
    "server": {"client", "tracer", "container", "commands", "cli"},
    "tracer": {"server", "commands", "cli", "demo"},
}


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = ["parrot_cvmfs", *p.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = p
    return mods


def _imports(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a name imported from a package that
    is itself a module counts as that module)."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        # a package's own parents are imported by Python anyway: not an arrow
        graph[name] = {d for d in deps if d in mods and d != name and not name.startswith(d + ".")}
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_circle() -> None:
    graph = _imports(_modules())
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(path[path.index(d) :] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_arrows_point_down() -> None:
    graph = _imports(_modules())
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if _room(d) in FORBIDDEN.get(_room(m), ())
    )
    assert not wrong, "imports against the layers: " + ", ".join(wrong)


def test_the_checks_see_imports() -> None:
    """The graph is not empty by accident: known arrows are in it."""
    graph = _imports(_modules())
    assert "parrot_cvmfs.format.catalog" in graph["parrot_cvmfs.client.namespace"]
    assert "parrot_cvmfs.client.repository" in graph["parrot_cvmfs.tracer.vfs"]
    assert "parrot_cvmfs.format.dirtab" in graph["parrot_cvmfs.client.bundle.unbundling"]
