#!/usr/bin/env python3
"""Course-length check for the notebooks: code cells of a few lines, lines a reader can see whole.

    python tools/nb_style.py [nbs/*.ipynb]      # list cells over 40 lines and code lines over 110 characters
    python tools/nb_style.py --check            # exit 1 past the hard limits (45 lines a cell, 120 characters)

Markdown cells are prose and may have long lines; outputs are not checked.
"""
import json, sys
from pathlib import Path

SOFT_CELL, SOFT_LINE, HARD_CELL, HARD_LINE = 40, 110, 45, 120

def scan(path: Path):
    "Yield `(kind, cell_number, length, first_line)` for every code cell or line over the soft limits."
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code": continue
        lines = "".join(cell["source"]).splitlines()
        if len(lines) > SOFT_CELL: yield "cell", i, len(lines), lines[0][:60]
        for line in lines:
            if len(line) > SOFT_LINE and not line.lstrip().startswith("#"): yield "line", i, len(line), line.strip()[:60]

def main(argv):
    check = "--check" in argv
    paths = [Path(a) for a in argv if not a.startswith("--")] or sorted(Path(__file__).parent.parent.glob("nbs/*.ipynb"))
    hard = 0
    for p in paths:
        for kind, i, n, first in scan(p):
            over = n > (HARD_CELL if kind == "cell" else HARD_LINE)
            hard += over
            if not check or over: print(f"{p.name} cell {i}: {kind} of {n} {'lines' if kind == 'cell' else 'chars'}"
                                        f"{' (over the hard limit)' if over else ''}: {first}")
    if check:
        if hard: sys.exit(f"{hard} code cell(s)/line(s) over the hard limits ({HARD_CELL} lines, {HARD_LINE} chars)")
        print(f"notebook cells within {HARD_CELL} lines and code lines within {HARD_LINE} characters")

if __name__ == "__main__": main(sys.argv[1:])
