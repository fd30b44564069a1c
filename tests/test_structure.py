"""The shape of the one file (unit tier, reads the source only): its sections are
in dependency order, as the module docstring promises: a definition never uses,
when it runs, a name defined in a later section (annotations do not count: they
are strings under ``from __future__ import annotations``)."""

import ast
import re

from lab import ACMEBOT

SOURCE = ACMEBOT.read_text(encoding="utf-8")
HEADER = re.compile(r"# §(\d+) (.+?) #+$")


def sections():
    """[(first line, number, title)] of the `# §N title ####` banners."""
    return [(i, int(m.group(1)), m.group(2)) for i, line in enumerate(SOURCE.splitlines(), 1)
            if (m := HEADER.match(line))]


def section_of(lineno, banners):
    number = 0
    for first, n, _ in banners:
        if first <= lineno:
            number = n
    return number


def top_level_names(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


class Uses(ast.NodeVisitor):
    """The global names a definition reads, without annotations and without
    names it binds itself (parameters, local variables, nested functions)."""

    def __init__(self):
        self.loads, self.bound = [], set()

    def visit_FunctionDef(self, node):
        self.bound.add(node.name)
        for child in node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d]:
            self.visit(child)
        args = node.args
        for arg in args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]:
            self.bound.add(arg.arg)
        for statement in node.body:
            self.visit(statement)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        for arg in node.args.args:
            self.bound.add(arg.arg)
        self.visit(node.body)

    def visit_AnnAssign(self, node):
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Store):
            self.bound.add(node.id)
        else:
            self.loads.append((node.id, node.lineno))


def backward_reaches():
    banners = sections()
    tree = ast.parse(SOURCE)
    home = {}
    for node in tree.body:
        for name in top_level_names(node):
            home.setdefault(name, section_of(node.lineno, banners))
    found = []
    for node in tree.body:
        names = top_level_names(node)
        if not names:
            continue
        here = section_of(node.lineno, banners)
        uses = Uses()
        if isinstance(node, ast.ClassDef):
            for child in node.bases + node.decorator_list + node.body:
                uses.visit(child)
        else:
            uses.visit(node)
        for name, lineno in uses.loads:
            if name not in uses.bound and home.get(name, 0) > here:
                found.append(f"line {lineno}: {names[0]} (§{here}) uses {name} of §{home[name]}")
    return found


def test_sections_are_numbered_in_order_and_mapped_in_the_docstring():
    banners = sections()
    assert [n for _, n, _ in banners] == list(range(1, len(banners) + 1))
    docstring = ast.get_docstring(ast.parse(SOURCE))
    for _, number, title in banners:
        assert re.search(rf"§{number}\s+{re.escape(title.split()[0])}", docstring), (number, title)


def test_earlier_sections_never_reach_for_later_ones():
    assert backward_reaches() == []


def test_the_scan_sees_a_backward_reach():
    """The check above can fail: a use of a later section's function is found."""
    banners = sections()
    first_line = banners[1][0]          # a definition placed in §2 that calls main() of the last section
    global SOURCE
    saved = SOURCE
    lines = saved.splitlines()
    SOURCE = "\n".join(lines[:first_line] + ["def _probe():", "    return main()"] + lines[first_line:])
    try:
        assert any("_probe (§2) uses main" in line for line in backward_reaches())
    finally:
        SOURCE = saved
