"""The layering of docs/architecture.md holds: no module of `cmdp` imports a layer below its
own, and no modules import each other in a circle.

The layers are read from the doc's first ```text block (one line per layer, its paths first,
a continuation line indented), so the doc and this test cannot drift apart. Every import
counts: module-level, function-local and the `if TYPE_CHECKING:` ones, read with `ast`.
"""
from __future__ import annotations

import ast
import os
import re
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DOC = os.path.join(_ROOT, "docs", "architecture.md")
_PACKAGE = "cmdp"


def layers() -> list[list[str]]:
  """The doc's layers, top first: each a list of paths (`cmdp/text.py`, `cmdp/models/`)."""
  with open(_DOC, encoding="utf-8") as f:
    block = re.search(r"```text\n(.*?)```", f.read(), re.S)
  assert block, f"{_DOC} has no ```text block listing the layers."
  out = []
  for line in block.group(1).splitlines():
    paths = re.match(rf"{_PACKAGE}/[\w./]+(?:,\s*{_PACKAGE}/[\w./]+)*", line)
    if paths:  # a layer's first line (continuation lines are indented)
      out.append(re.split(r",\s*", paths.group(0)))
  return out


def modules() -> dict[str, str]:
  """Every module of the package: dotted name -> file, relative to the repository root."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(os.path.join(_ROOT, _PACKAGE)):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
    for name in sorted(filenames):
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, name), _ROOT).replace(os.sep, "/")
        dotted = rel[:-len(".py")].replace("/", ".")
        out[dotted.removesuffix(".__init__")] = rel
  return out


def layer_of(rel: str, listed: list[list[str]]) -> int | None:
  """The index of the layer whose paths hold the file `rel` (a file, or a folder above it)."""
  for i, paths in enumerate(listed):
    if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in paths):
      return i
  return None


def imports(module: str, rel: str, known: dict[str, str]) -> set[str]:
  """The package's modules that `module` imports anywhere in its file (a `from a import b`
  names `a.b` when that is a module, else `a`)."""
  with open(os.path.join(_ROOT, rel), encoding="utf-8") as f:
    tree = ast.parse(f.read(), rel)
  package = module if rel.endswith("__init__.py") else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's package, `level - 1` packages up
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in known:  # `import cmdp.models.decode as d` etc.
        name = name.rpartition(".")[0]
      if name and name != module:
        out.add(name)
  return out


def graph() -> dict[str, set[str]]:
  known = modules()
  return {m: imports(m, rel, known) for m, rel in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Each strongly connected set of two or more modules (Tarjan), as a sorted list."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        out.append(sorted(group))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_the_doc_lists_layers_and_every_module_has_one():
  listed = layers()
  assert len(listed) >= 10, f"{_DOC}: only {len(listed)} layers parsed: {listed}"
  unlisted = sorted(rel for rel in modules().values() if layer_of(rel, listed) is None)
  assert not unlisted, (f"modules in no layer of {_DOC}'s ```text block (add them where "
                        f"they sit): {unlisted}")


def test_no_module_imports_a_layer_below_its_own():
  listed, known = layers(), modules()
  back = []
  for module, targets in sorted(graph().items()):
    own = layer_of(known[module], listed)
    for target in sorted(targets):
      below = layer_of(known[target], listed)
      if own is not None and below is not None and below > own:
        back.append(f"{module} ({', '.join(listed[own])}) imports {target} "
                    f"({', '.join(listed[below])}), a layer below")
  assert not back, "back edges against docs/architecture.md:\n" + "\n".join(back)


def circle(group: list[str], edges: dict[str, set[str]]) -> list[str]:
  """One circle of imports through the first module of `group` (a set `cycles` found), as
  the modules in import order, the first repeated at the end."""
  start, inside = group[0], set(group)
  paths = {start: [start]}
  todo = [start]
  while todo:  # breadth first: the shortest circle back to `start`
    v = todo.pop(0)
    for w in sorted(edges[v] & inside):
      if w == start:
        return paths[v] + [start]
      if w not in paths:
        paths[w] = paths[v] + [w]
        todo.append(w)
  raise AssertionError(f"no circle through {start} in {group}")


def test_no_import_cycles():
  edges = graph()
  found = [" -> ".join(circle(group, edges)) for group in cycles(edges)]
  assert not found, "modules importing each other in a circle:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from cmdp.models import decode, KVCache\n", {"cmdp.models.decode", "cmdp.models"}),
    ("def f():\n  from cmdp import sharding\n", {"cmdp.sharding"}),
    ("import cmdp.models.decode as d\n", {"cmdp.models.decode"}),
    ("from . import transformer\nfrom .config import ModelConfig\n",
     {"cmdp.models.transformer", "cmdp.models.config"}),
    ("import typing\nif typing.TYPE_CHECKING:\n  from cmdp.rollout import sampler\n",
     {"cmdp.rollout.sampler"}),
])
def test_every_import_form_is_read(tmp_path, monkeypatch, source, expected):
  monkeypatch.setattr(sys.modules[__name__], "_ROOT", str(tmp_path))
  (tmp_path / "m.py").write_text(source)
  known = {m: "" for m in ("cmdp", "cmdp.models", "cmdp.models.decode", "cmdp.sharding",
                           "cmdp.models.transformer", "cmdp.models.config", "cmdp.rollout",
                           "cmdp.rollout.sampler")}
  assert imports("cmdp.models.loading", "m.py", known) == expected


def test_a_cycle_and_a_back_edge_are_found():
  edges = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": {"a"}, "e": {"a"}}
  assert cycles(edges) == [["a", "b", "c", "d"]]
  assert circle(["a", "b", "c", "d"], edges) == ["a", "b", "c", "a"]
  listed = [["cmdp/text.py", "cmdp/models/"], ["cmdp/sharding.py"]]
  assert layer_of("cmdp/models/decode.py", listed) == 0
  assert layer_of("cmdp/sharding.py", listed) == 1
  assert layer_of("cmdp/quote.py", listed) is None
