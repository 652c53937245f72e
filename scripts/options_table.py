#!/usr/bin/env python3
"""Write the options table of docs/operations.md from signaling.conf.SCHEMA.

The table lives between two markers in the doc; everything else there is
written by hand. The descriptions are SCHEMA's fourth elements: edit them there.

    .venv/bin/python scripts/options_table.py           rewrite the table
    .venv/bin/python scripts/options_table.py --check   exit 1 if the doc differs
"""
import argparse
import difflib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operations.md"
COMMAND = ".venv/bin/python scripts/options_table.py"
BEGIN = f"<!-- options table: generated from signaling.conf.SCHEMA by {COMMAND}; edit the descriptions there -->"
END = "<!-- end of the options table -->"


def default_text(default):
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, list):
        default = ",".join(default)
    if default == "":
        return "empty"
    return f"`{default}`"


def table():
    sys.path.insert(0, str(ROOT))
    from signaling.conf import SCHEMA

    lines = ["| `PEERJS` key | environment variable | default | meaning |", "|---|---|---|---|"]
    for name, (variable, default, _, description) in SCHEMA.items():
        cells = [f"`{name}`", f"`{variable}`", default_text(default), description.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rendered(text):
    """The doc's text with the table between the markers written afresh."""
    try:
        head, rest = text.split(BEGIN + "\n", 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        sys.exit(f"error: the doc has no pair of markers:\n{BEGIN}\n{END}")
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the doc is current")
    parser.add_argument("--doc", type=pathlib.Path, default=DOC, help="the doc (docs/operations.md)")
    args = parser.parse_args()
    text = args.doc.read_text(encoding="utf-8")
    new = rendered(text)
    if not args.check:
        if new != text:
            args.doc.write_text(new, encoding="utf-8")
        return 0
    if new == text:
        return 0
    diff = difflib.unified_diff(text.splitlines(), new.splitlines(), "the doc", "from SCHEMA", lineterm="", n=0)
    print("\n".join(diff))
    print(f"\n{args.doc} differs from signaling.conf.SCHEMA: run {COMMAND}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
