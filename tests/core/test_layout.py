"""The layout: mixlab/ never imports the tools beside it, and the modules of mixlab/ (and of tools/)
import each other without a cycle (imports inside functions included: they hide a cycle, they do
not remove it)."""

import ast
from pathlib import Path

import pytest
from support import ROOT

PACKAGE = ROOT / "mixlab"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in the file, at any depth; `from a import b` gives a.b
    (a module or a name in a), relative imports resolved against the file's package."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return names


def import_graph(package: Path = PACKAGE, root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package's modules it imports}: an imported name maps to its longest module prefix."""
    files = {module_name(p, root): p for p in sorted(package.rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        targets = set()
        for _, name in imported_names(path, root):
            parts = name.split(".")
            target = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in files), None)
            if target is not None and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) through each strongly connected component with more than one module
    (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                    components.append(set(component))
    return [_cycle_in(graph, c) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    first = min(component)
    previous, frontier = {first: None}, [first]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == first:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [first, *reversed(path[:-1]), first] if len(path) > 1 else [first, node, first]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle in component {component}")


def test_the_library_never_imports_the_tools():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in imported_names(path)
        if name == "tools" or name.startswith("tools.")
    ]
    assert found == [], "mixlab imports the tools beside it:\n" + "\n".join(found)


@pytest.mark.parametrize("package", ["mixlab", "tools"])
def test_no_import_cycle(package):
    cycles = find_cycles(import_graph(ROOT / package))
    assert cycles == [], f"import cycles in {package}/:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_resolves_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "mixlab" / "pkg"
    pkg.mkdir(parents=True)
    (tmp_path / "mixlab" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom . import b\nfrom .b import thing\n\n\ndef f():\n    import mixlab.pkg.c as c\n")
    (pkg / "b.py").write_text("thing = 1\n")
    (pkg / "c.py").write_text("def g():\n    from ..pkg.a import f\n")
    graph = import_graph(tmp_path / "mixlab", tmp_path)
    assert graph == {
        "mixlab": set(),
        "mixlab.pkg": set(),
        "mixlab.pkg.a": {"mixlab.pkg.b", "mixlab.pkg.c"},
        "mixlab.pkg.b": set(),
        "mixlab.pkg.c": {"mixlab.pkg.a"},
    }
    assert find_cycles(graph) == [["mixlab.pkg.a", "mixlab.pkg.c", "mixlab.pkg.a"]]
