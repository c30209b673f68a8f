"""The keys docs/metrics.md documents, as patterns to check logged keys against."""
import os
import re

from tests.training.tiny import _ROOT

PAGE = os.path.join(_ROOT, "docs", "metrics.md")
MODELS = ("student", "teacher", "initial_student")


def _pattern(key: str) -> str:
  """A row's key as a regex: `{a,b}` is either, `<k>` a number."""
  out, i = "", 0
  for m in re.finditer(r"\{([^}]*)\}|<k>", key):
    out += re.escape(key[i:m.start()])
    out += r"\d+" if m.group(0) == "<k>" else "(?:" + "|".join(
        re.escape(a) for a in m.group(1).split(",")) + ")"
    i = m.end()
  return out + re.escape(key[i:])


def documented(section: str) -> list[str]:
  """The regexes of the rows of the `## <section>` table (e.g. "metrics.jsonl")."""
  text = open(PAGE).read().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  return [_pattern(m.group(1)) for m in re.finditer(r"^\| `([^`]+)` \|", text, re.M)]


def undocumented(keys, section: str) -> list[str]:
  """The `keys` of a metrics.jsonl row or an eval.json model without a row in `section`.
  `eval/<model>/<key>` scalars are checked against the eval.json rows."""
  rows = [re.compile(p + "$") for p in documented(section)]
  evals = [re.compile(p + "$") for p in documented("eval.json")]
  out = []
  for key in keys:
    m = re.match(rf"eval/({'|'.join(MODELS)})/(.+)$", key) if section == "metrics.jsonl" \
        else None
    table, name = (evals, m.group(2)) if m else (rows, key)
    if not any(r.match(name) for r in table):
      out.append(key)
  return sorted(out)
