"""What the portable llama.cpp build costs against a native one, in tokens/s on this machine.

Builds a random GGUF of Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads,
intermediate 4864; a small vocabulary), quantizes it to Q8_0 and Q4_K_M with llama.cpp's own
code, then for each llama-cpp-python given (one venv per build) and each quantization measures
prompt processing (128 tokens) and token generation (64 tokens, greedy) through the Python API,
median of 3, in a subprocess each, so that a build that dies (SIGILL) is reported as such.

    python benchmarks/llama_build_speed.py --build portable=.venv/bin/python --build native=/tmp/nv/bin/python

A native build for comparison: ``CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" pip wheel
--no-deps llama-cpp-python==0.3.36`` installed into a venv of its own.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import tiny_model  # noqa: E402

SHAPE = {"HIDDEN": 896, "INTERMEDIATE": 4864, "LAYERS": 24, "HEADS": 14, "KV_HEADS": 2}

MEASURE = r"""
import json, statistics, sys, time
import llama_cpp
path, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False, seed=0)
prompt = [(i * 7919) % 2000 + 3 for i in range(n_prompt)]
pp, tg = [], []
for _ in range(3):
    llm.reset()
    t0 = time.perf_counter(); llm.eval(prompt); pp.append(n_prompt / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    for _ in range(n_gen):
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        llm.eval([token])
    tg.append(n_gen / (time.perf_counter() - t0))
print(json.dumps({"pp_tok_s": statistics.median(pp), "tg_tok_s": statistics.median(tg),
                  "system_info": llama_cpp.llama_print_system_info().decode().strip()}))
"""


def build_models(out: Path, data_dir: Path) -> dict[str, Path]:
    """The F16 GGUF of Qwen2-0.5B's shape and its Q8_0/Q4_K_M quantizations (cached in ``out``)."""
    for name, value in SHAPE.items():
        setattr(tiny_model, name, value)
    tiny_model.HEAD_DIM = tiny_model.HIDDEN // tiny_model.HEADS
    out.mkdir(parents=True, exist_ok=True)
    paths = {q: out / f"qwen2-0.5b-shape-{q}.gguf" for q in ("f16", "q8_0", "q4_k_m")}
    if not all(p.exists() for p in paths.values()):
        vocab = tiny_model.build_tokenizer(data_dir, out)
        tensors = tiny_model.build_weights(len(vocab), [vocab[s] for s in tiny_model.SPECIALS])
        tiny_model.write_gguf(paths["f16"], tensors, out / "tokenizer.json")
        tiny_model.quantize(paths["f16"], paths["q8_0"], "q8_0")
        tiny_model.quantize(paths["f16"], paths["q4_k_m"], "q4_k_m")
    return paths


def measure(python: str, model: Path, n_prompt: int, n_gen: int) -> dict[str, object]:
    done = subprocess.run(
        [python, "-c", MEASURE, str(model), str(n_prompt), str(n_gen)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        how = (
            f"died: signal {-done.returncode} ({signal.Signals(-done.returncode).name})"
            if done.returncode < 0
            else f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        )
        return {"error": how}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", action="append", required=True, help="NAME=PYTHON (a venv with llama-cpp-python)")
    p.add_argument("--out", default=str(Path.home() / ".cache" / "orchestrator" / "bench-qwen2-0.5b-shape"))
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    args = p.parse_args()
    models = build_models(Path(args.out), Path(args.data_dir))
    builds = dict(b.split("=", 1) for b in args.build)
    results: dict[str, dict[str, dict[str, object]]] = {}
    for name, python in builds.items():
        for quant, model in models.items():
            results.setdefault(name, {})[quant] = r = measure(python, model, args.prompt_tokens, args.gen_tokens)
            figures = (
                str(r["error"])
                if "error" in r
                else f"pp{args.prompt_tokens} {r['pp_tok_s']:8.1f} tok/s tg{args.gen_tokens} {r['tg_tok_s']:6.1f} tok/s"
            )
            print(f"{name:>10} {quant:>7}: {figures}", flush=True)
    names = list(builds)
    if len(names) == 2:
        a, b = names
        for quant in models:
            ra, rb = results[a][quant], results[b][quant]
            if "error" in ra or "error" in rb:
                continue
            print(
                f"{quant:>7}: {a}/{b} pp {float(ra['pp_tok_s']) / float(rb['pp_tok_s']):.2f}x, "  # type: ignore[arg-type]
                f"tg {float(ra['tg_tok_s']) / float(rb['tg_tok_s']):.2f}x"  # type: ignore[arg-type]
            )
    for name in names:
        info = next((r["system_info"] for r in results[name].values() if "system_info" in r), "n/a")
        print(f"{name}: {info}")


if __name__ == "__main__":
    main()
