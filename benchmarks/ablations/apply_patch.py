"""Apply a unified diff (a/ and b/ paths, as `git diff` or `diff -u --label` write them) to a tree, in Python:
the device image may have neither git nor patch. Each hunk's old lines must appear in the file exactly; they are
looked for nearest the hunk's line number first, so edits elsewhere in the file only shift them. Nothing is
written unless every hunk of every file applies.

Usage: python3 benchmarks/ablations/apply_patch.py PATCH TREE
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


def parse(text: str) -> dict[str, list[tuple[int, list[str], list[str]]]]:
    """{path: [(old start line (1-based), old lines, new lines), ...]} of a unified diff."""
    files: dict = {}
    path, hunk = None, None
    for line in text.splitlines():
        if line.startswith("+++ "):
            path = line[4:].split("\t")[0].removeprefix("b/")
            files[path] = []
        elif line.startswith("--- "):
            continue
        elif (m := _HUNK.match(line)) and path is not None:
            hunk = (int(m.group(1)), [], [])
            files[path].append(hunk)
        elif hunk is not None and line[:1] in (" ", "-", "+"):
            if line[0] != "+":
                hunk[1].append(line[1:])
            if line[0] != "-":
                hunk[2].append(line[1:])
    return files


def apply(text: str, tree: Path) -> list[str]:
    """Apply the diff under ``tree``; the paths changed. Raises ValueError naming the first hunk that does not
    apply (then nothing is written)."""
    out = {}
    for path, hunks in parse(text).items():
        lines = (tree / path).read_text().splitlines()
        shift = 0
        for start, old, new in hunks:
            want = start - 1 + shift
            at = sorted((i for i in range(len(lines) - len(old) + 1) if lines[i:i + len(old)] == old),
                        key=lambda i: abs(i - want))
            if not at:
                raise ValueError(f"{path}: the hunk at line {start} does not apply (its context changed)")
            lines[at[0]:at[0] + len(old)] = new
            shift += at[0] - want + len(new) - len(old)
        out[path] = "\n".join(lines) + "\n"
    for path, body in out.items():
        (tree / path).write_text(body)
    return list(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    try:
        print("patched:", ", ".join(apply(Path(sys.argv[1]).read_text(), Path(sys.argv[2]))))
    except ValueError as exc:
        raise SystemExit(f"{sys.argv[1]}: {exc}")
