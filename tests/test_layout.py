"""The house's layout: core/ holds the method, its neighbours say what they are, nothing imports in a circle, and
every path the README and docs name exists."""
import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGES = ('core', 'metrics')
# rooms that use the method: no module of the method (core/*.py) may import them
USERS = ('core.inference', 'core.demo')


def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def modules():
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob('*.py'))}


def imports_of(path, known):
    """The project modules a file imports anywhere in it (function-level imports included), by absolute name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from core import utils` imports the module core.utils; `from core.model import X` imports core.model
            names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition('.')[0]
            if name and name not in PACKAGES:
                found.add(name)
    return found


def import_graph():
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 'done'
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_function_level_circle(tmp_path):
    a = tmp_path / 'a.py'
    a.write_text('def f():\n    import core.b\n')
    assert imports_of(a, {'core.b': None}) == {'core.b'}
    assert find_cycle({'core.a': {'core.b'}, 'core.b': {'core.c'}, 'core.c': {'core.a'}}) == \
        ['core.a', 'core.b', 'core.c', 'core.a']
    assert find_cycle({'core.a': {'core.b'}, 'core.b': set()}) is None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, 'import circle: ' + ' -> '.join(cycle)


def test_core_holds_the_method_and_rooms_beside_it():
    top = sorted(p.name for p in (REPO / 'core').glob('*.py') if p.name != '__init__.py')
    assert len(top) <= 12, top
    for room in ('model', 'solver', 'data_loader', 'checkpoint', 'wing', 'utils', 'losses', 'config'):
        assert f'{room}.py' in top
    for sub in (p for p in (REPO / 'core').iterdir() if p.is_dir() and p.name != '__pycache__'):
        init = sub / '__init__.py'
        assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f'{sub}: say what it holds'


def test_the_method_does_not_import_what_uses_it():
    graph = import_graph()
    for name, deps in graph.items():
        if name.count('.') == 1 and name.startswith('core.'):
            users = sorted(d for d in deps if d.startswith(USERS))
            assert not users, f'{name} imports {users}'


# a path up to its last word character; one that runs on into a placeholder (tests/test_<module>.py) is no path
PATH_IN_DOCS = re.compile(r'(?<![\w/.-])((?:core|metrics|scripts|tests)/[\w/.-]*\w)/?(?![\w/.<{*-])')


def test_every_path_named_in_the_docs_exists():
    docs = [REPO / 'README.md', *sorted((REPO / 'docs').rglob('*.md'))]
    assert PATH_IN_DOCS.findall('`core/solver.py`, core/machinery/ and tests/test_<module>.py (scripts/x.py).') == \
        ['core/solver.py', 'core/machinery', 'scripts/x.py']
    missing, checked = [], 0
    for doc in docs:
        for path in set(PATH_IN_DOCS.findall(doc.read_text())):
            checked += 1
            if not (REPO / path).exists():
                missing.append(f'{doc.relative_to(REPO)}: {path}')
    assert not missing, '\n'.join(sorted(missing))
    assert checked > 40  # the docs name many paths: a pattern that found few would check nothing
