#!/usr/bin/env python3
"""Latency of every bundled model with ONNX Runtime on one thread, for comparison with
tract (`cargo bench --bench inspect` prints tract's figure per model, measured the same
way: one input of the model's size, 20 warm-up runs, then 300 timed runs).

ONNX Runtime runs with one intra-op and one inter-op thread, sequential execution and
all graph optimisations, the fairest match for stationd's inference threads (each runs
one inference at a time with tract's optimised plan).

Usage (from the repository root):
    python3 -m venv /tmp/ortenv && /tmp/ortenv/bin/pip install onnxruntime numpy
    /tmp/ortenv/bin/python tools/bench_onnxruntime.py
"""

from __future__ import annotations

import pathlib
import time
import tomllib

import numpy as np
import onnxruntime as ort

WARMUP = 20
ITERATIONS = 300


def bench(folder: pathlib.Path) -> None:
    spec = tomllib.loads((folder / "model.toml").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = (1, 3, spec["input"]["height"], spec["input"]["width"])
    data = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    for _ in range(WARMUP):
        session.run(None, {name: data})
    times = []
    for _ in range(ITERATIONS):
        started = time.perf_counter()
        session.run(None, {name: data})
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    pick = lambda q: times[round((len(times) - 1) * q)]  # noqa: E731
    print(
        f"{folder.name:<24} onnxruntime {ort.__version__} 1 thread: "
        f"mean={sum(times) / len(times):.3f} ms  p50={pick(0.5):.3f} ms  p99={pick(0.99):.3f} ms"
    )


def main() -> None:
    for folder in sorted(pathlib.Path("models").iterdir()):
        if (folder / "model.onnx").exists():
            bench(folder)


if __name__ == "__main__":
    main()
