#!/usr/bin/env python3
"""Move top-level imports out of notebook cells that also hold other code, into an import-only cell just before.

Why: `nbdev_proc_nbs`/`nbdev_docs` execute every non-exported cell that contains an import (to render `show_doc`),
without running the cells in between; a cell that mixes an import with code depending on earlier cells then fails
there. Usage: python tools/split_import_cells.py nbs/*.ipynb   (rewrites in place; `--check` only reports)."""
import ast, json, sys, uuid

def split(cell):
    src = "".join(cell["source"])
    if "nbdev_export()" in src: return None                       # nbdev never executes the export cell
    lines = src.split("\n")
    directives = [l for l in lines if l.startswith("#|")]
    if any(d.replace(" ", "").startswith(("#|export", "#|exports", "#|exporti", "#|eval:false")) for d in directives): return None
    try: tree = ast.parse("\n".join("" if l.startswith(("%", "!")) else l for l in lines))
    except SyntaxError: return None
    imps = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    if not imps or len(imps) == len(tree.body): return None
    take = {i for n in imps for i in range(n.lineno - 1, n.end_lineno)}
    imp_src = directives + [l for i, l in enumerate(lines) if i in take]
    rest = [l for i, l in enumerate(lines) if i not in take]
    while rest and not rest[0].strip(): rest.pop(0)
    new = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
           "source": [l + "\n" for l in imp_src[:-1]] + imp_src[-1:]}
    if "id" in cell: new["id"] = uuid.uuid4().hex[:8]
    cell["source"] = [l + "\n" for l in rest[:-1]] + rest[-1:]
    return new

def main(paths, check=False):
    bad = 0
    for p in paths:
        nb = json.load(open(p)); out = []
        for c in nb["cells"]:
            if c["cell_type"] == "code" and (new := split(c)) is not None:
                bad += 1; print(f"{p}: split {''.join(new['source']).splitlines()[-1][:70]!r}")
                out.append(new)
            out.append(c)
        if not check and len(out) != len(nb["cells"]):
            nb["cells"] = out
            with open(p, "w") as f: json.dump(nb, f, indent=1, ensure_ascii=False); f.write("\n")
    return bad

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--check"]
    n = main(args, check="--check" in sys.argv)
    sys.exit(1 if n and "--check" in sys.argv else 0)
