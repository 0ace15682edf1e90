"""How the package is laid out, in figures: lines per module, the biggest functions, the places
that name a task, and (when the workplace's `duplicates` command is on PATH) the repeated pairs.

Usage: python benchmarks/structure.py [--repo DIR] [--top 10]

Run it on two checkouts (e.g. `git worktree add /tmp/before REV`) to compare a refactoring's
before and after. "Places that name a task" counts string literals equal to a task name
("mmlu", "ceval", "ifeval") in orchestrator/ outside the registry and the task modules, which are
where those names belong.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
from pathlib import Path

TASK_NAMES = ("mmlu", "ceval", "ifeval")


def module_lines(pkg: Path) -> dict[str, int]:
    """Non-blank lines per module."""
    return {
        str(p.relative_to(pkg.parent)): sum(1 for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
        for p in sorted(pkg.rglob("*.py"))
    }


def functions(pkg: Path) -> list[tuple[int, str]]:
    """(lines, module:qualified name) of every function and method."""
    out: list[tuple[int, str]] = []
    for p in sorted(pkg.rglob("*.py")):
        tree = ast.parse(p.read_text(encoding="utf-8"))

        def walk(node: ast.AST, prefix: str, path: Path = p) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = f"{prefix}{child.name}"
                    out.append(((child.end_lineno or child.lineno) - child.lineno + 1, f"{path.name}:{name}"))
                    walk(child, f"{name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

        walk(tree, "")
    return sorted(out, reverse=True)


def task_name_places(pkg: Path) -> list[str]:
    """Where a task name is spelled out as a string, outside the registry and tasks/."""
    places = []
    for p in sorted(pkg.rglob("*.py")):
        rel = p.relative_to(pkg)
        if rel.parts[0] == "tasks" or rel.name == "registry.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in TASK_NAMES:
                places.append(f"{rel}:{node.lineno} {node.value!r}")
    return places


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    repo = Path(args.repo)
    pkg = repo / "orchestrator"
    lines = module_lines(pkg)
    print(f"modules: {len(lines)}, lines (non-blank): {sum(lines.values())}")
    for name, n in sorted(lines.items(), key=lambda kv: -kv[1]):
        print(f"  {n:5d}  {name}")
    funcs = functions(pkg)
    print(f"functions: {len(funcs)}; the {args.top} biggest (lines):")
    for n, name in funcs[: args.top]:
        print(f"  {n:5d}  {name}")
    places = task_name_places(pkg)
    print(f"places naming a task outside registry.py and tasks/: {len(places)}")
    for place in places:
        print(f"  {place}")
    if shutil.which("duplicates"):
        out = subprocess.run(["duplicates", "--repo", str(pkg), "--most", "1"], capture_output=True, text=True)
        print(f"duplicates (orchestrator/): {out.stdout.splitlines()[0] if out.stdout else out.stderr.strip()}")


if __name__ == "__main__":
    main()
