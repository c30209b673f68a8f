"""What every `python -m cmdp.*` command shares.

* `--help` (or `-h`) prints the command's usage, an example and its options, and exits 0.
* A user's mistake (a config field that cannot work, a checkpoint of another config, a
  missing directory, a refused override, a misspelt flag) is one line on stderr naming the
  field and the fix, exit status 2; `--verbose` shows the traceback as well.
"""
from __future__ import annotations

import ast
import os
import re
import sys
from typing import Callable

from absl import app, flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")
# What a user's mistake raises once the command line is read: configs and data name the
# field in a ValueError (CheckpointMismatchError is one), a missing file or directory is a
# FileNotFoundError. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)

# Config fields that moved, {old dotted name: new one}: an override of an old one is
# refused naming the new one, and so is a config that sets it (cmdp.training.config).
MOVED_FIELDS = {"loss.group_size": "rollout.group_size"}

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_files() -> list[str]:
  """The experiment configs shipped in `configs/` (paths relative to the repository)."""
  folder = os.path.join(_ROOT, "configs")
  if not os.path.isdir(folder):
    return []
  return sorted(f"configs/{n}" for n in os.listdir(folder)
                if n.endswith(".py") and not n.startswith("_"))


def config_summaries() -> list[tuple[str, str]]:
  """(path, first line of its docstring) for each shipped config, read without importing."""
  import ast  # pylint: disable=g-import-not-at-top
  out = []
  for path in config_files():
    with open(os.path.join(_ROOT, path)) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    out.append((path, doc.strip().splitlines()[0] if doc.strip() else ""))
  return out


def moved_field(old: str) -> str:
  """The one-line refusal of `old`, a moved config field (a key of MOVED_FIELDS)."""
  return f"config.{old} moved to config.{MOVED_FIELDS[old]}; set that instead."


def wants_help(argv: list[str]) -> bool:
  return any(a in HELP_FLAGS for a in argv[1:])


def verbose(argv: list[str]) -> bool:
  return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")
             for a in argv[1:])


def error_line(err: BaseException, argv: list[str] = ()) -> str:
  """The one line that says what went wrong (the last line of a wrapped traceback, a
  KeyError's own message rather than its repr, a misspelt config field with the override
  of `argv` that names it)."""
  if isinstance(err, (KeyError, AttributeError)) and err.args:
    text = str(err.args[0])
  else:
    text = str(err)
  # ml_collections wraps a KeyError's repr in an AttributeError's: unwrap the literals.
  while len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      break
  misspelt = re.fullmatch(r"'?(\w+)'?(?:\s*Did you mean \"(\w+)\" instead of \"\w+\"\?)?",
                          text)
  if misspelt and isinstance(err, (KeyError, AttributeError)):
    name, close = misspelt.groups()
    named = (re.match(rf"(--config(?:\.\w+)*?\.{name})(?:[.=]|$)", a) for a in argv)
    flag = next((m.group(1) for m in named if m), None)
    if flag and flag.removeprefix("--config.") in MOVED_FIELDS:
      return moved_field(flag.removeprefix("--config."))
    if flag or close:
      return ((f"{flag}: " if flag else "") + f"the config has no field {name!r}"
              + (f"; did you mean \"{close}\"?" if close else "")
              + " (docs/configuration.md lists every field)")
  if "Failed loading config file" in text:  # config_flags' message for a missing file
    missing = re.search(r"\[Errno \d+\] ([^\n]*)", text)
    return (f"--config: {missing.group(1) if missing else text.splitlines()[-1].strip()}; "
            "the shipped configs are in configs/ (--help lists them).")
  if "Traceback (most recent call last)" in text:  # config_flags wraps the config's error
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    text = lines[-1] if lines else text
    for prefix in ("ValueError: ", "KeyError: ", "FileNotFoundError: ", "OSError: "):
      text = text.removeprefix(prefix)
  return " ".join(text.split())


def fail(command: str, message: str, hint: str = "") -> None:
  """Prints `command: message` (and the hint) as one line on stderr and exits 2."""
  print(f"{command}: {message}{' ' + hint if hint else ''}", file=sys.stderr)
  sys.exit(2)


def run(main: Callable[[list[str]], None], command: str, usage: str,
        hint: Callable[[str, list[str]], str] | None = None) -> None:
  """Runs `main` as absl's `app.run` does, with the help and error handling above.

  `usage`: what `--help` prints before the options (what the command does, an example).
  `hint(message, argv)`: an extra sentence for an error message ("" for none).
  """
  argv = list(sys.argv)
  if wants_help(argv):
    options = [l for l in flags.FLAGS.main_module_help().splitlines()
               if l.strip() and not (l.endswith(".py:") or l.endswith(":") and "/" in l)]
    print(usage.strip() + "\n\nOptions:\n" + ("\n".join(options) or "  (none)"))
    sys.exit(0)
  loud = verbose(argv)

  def explain(err: BaseException) -> None:
    message = error_line(err, argv)
    fail(command, message, hint(message, argv) if hint else "")

  def parse(args: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(args)
      for name in ("config",):  # config_flags defers a config file's load error to its use
        if name in flags.FLAGS and flags.FLAGS[name].present:
          _ = flags.FLAGS[name].value.keys
      return rest
    except Exception as err:  # pylint: disable=broad-except
      # The command line itself: a misspelt flag or field, a config file that is missing or
      # refuses its argument, an override of the wrong type.
      if loud:
        raise
      explain(err)
    return []

  def guarded(args: list[str]) -> None:
    try:
      main(args)
    except USER_ERRORS as err:
      if loud:
        raise
      explain(err)

  app.run(guarded, flags_parser=parse)
