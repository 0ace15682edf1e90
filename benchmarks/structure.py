"""How the package is laid out, in figures: lines per module (and those over 450), the biggest
functions and those over 15 branches, how much is untyped (`Any`, `dict[str, Any]`), the places
that name a task, a backend or a latency metric outside the entries that define them, and (when
the workplace's `duplicates` command is on PATH) the repeated pairs.

Usage: python benchmarks/structure.py [--repo DIR] [--top 10]

Run it on two checkouts (e.g. `git worktree add /tmp/before REV`) to compare a refactoring's
before and after. "Places that name a task" counts string literals equal to a task name
("mmlu", "ceval", "ifeval") in orchestrator/ outside the registry and the task modules, which are
where those names belong.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
from pathlib import Path

TASK_NAMES = ("mmlu", "ceval", "ifeval")
BACKEND_NAMES = ("openai", "vllm", "llamacpp", "tgi", "tgi-chat", "sglang")
METRIC_NAMES = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "queue_ms", "post_ms", "server_tpot_ms", "server_wait_ms")
MAX_LINES = 450
MAX_BRANCHES = 15
BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler, ast.BoolOp, ast.match_case)


def branches(fn: ast.AST) -> int:
    """Decision points of a function, its nested functions left out (they count on their own)."""
    count = 0
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        count += isinstance(node, BRANCHES) + (len(node.ifs) if isinstance(node, ast.comprehension) else 0)
        stack.extend(ast.iter_child_nodes(node))
    return count


def untyped(pkg: Path) -> tuple[int, int]:
    """Occurrences of `Any` and of `dict[str, Any]` in the package's annotations and code."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(pkg.rglob("*.py")))
    return len(re.findall(r"\bAny\b", text)), text.count("dict[str, Any]")


def named_outside(pkg: Path, names: tuple[str, ...], homes: tuple[str, ...]) -> list[str]:
    """String literals equal to one of ``names`` outside the modules (or folders) in ``homes``."""
    places = []
    for p in sorted(pkg.rglob("*.py")):
        rel = str(p.relative_to(pkg))
        if any(rel == h or rel.startswith(h.rstrip("/") + "/") for h in homes):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                places.append(f"{rel}:{node.lineno} {node.value!r}")
    return places


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
    for name, n in sorted(lines.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {n:5d}  {name}")
    raw = {str(p.relative_to(repo)): len(p.read_text(encoding="utf-8").splitlines()) for p in pkg.rglob("*.py")}
    over = sorted((n, m) for m, n in raw.items() if n > MAX_LINES)
    print(f"modules over {MAX_LINES} lines: {len(over)} {', '.join(f'{m} ({n})' for n, m in over)}")
    anys, dicts = untyped(pkg)
    print(f"Any: {anys}; dict[str, Any]: {dicts}")
    complex_ = sorted(
        (branches(node), f"{p.name}:{node.name}")
        for p in sorted(pkg.rglob("*.py"))
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )
    big = [(n, f) for n, f in complex_ if n > MAX_BRANCHES]
    print(f"functions over {MAX_BRANCHES} branches: {len(big)} {', '.join(f'{f} ({n})' for n, f in reversed(big))}")
    funcs = functions(pkg)
    print(f"functions: {len(funcs)}; the {args.top} biggest (lines):")
    for n, name in funcs[: args.top]:
        print(f"  {n:5d}  {name}")
    places = task_name_places(pkg)
    print(f"places naming a task outside registry.py and tasks/: {len(places)}")
    for place in places:
        print(f"  {place}")
    homes = ("registry.py", "backends/", "deploy.py", "compose.py", "k8s.py", "matrix.py")
    backends = named_outside(pkg, BACKEND_NAMES, homes)
    print(f"places naming a backend outside registry.py, backends/ and the deployment renderings: {len(backends)}")
    for place in backends:
        print(f"  {place}")
    # The load test: its metrics, its report, and the bench's speed phase (load levels too).
    metrics = named_outside(pkg, METRIC_NAMES, ("metrics.py", "loadtest.py", "report/load.py", "speedphase.py"))
    print(f"places naming a latency metric outside metrics.py and the load test: {len(metrics)}")
    if shutil.which("duplicates"):
        out = subprocess.run(["duplicates", "--repo", str(pkg), "--most", "1"], capture_output=True, text=True)
        print(f"duplicates (orchestrator/): {out.stdout.splitlines()[0] if out.stdout else out.stderr.strip()}")


if __name__ == "__main__":
    main()
