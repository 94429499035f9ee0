#!/usr/bin/env python3
"""Builds models/patchcore-backbone: the feature extractor stationd fits PatchCore anomaly
models with (POST /api/v1/anomaly/fits).

The backbone is the convolutional trunk of the bundled parts classifier
(models/parts-classifier/model.onnx, itself trained by tools/train_parts_classifier.py on
images it synthesises): nothing is downloaded and nothing is trained here. As in PatchCore,
two levels of the trunk are used: the third and fourth conv blocks (r2 at 1/4 and r3 at 1/8
of the input), each averaged over its 3x3 neighbourhood (locally aware patch features), the
deeper one upsampled to the finer grid, and both concatenated:

    image [1, 3, 64, 64] -> features [1, 64, 16, 16]   (one 64-value feature per 4x4 pixels)

stationd appends the memory bank and the nearest-neighbour scoring to this graph when it
fits a model, so a fitted model is an ordinary ONNX anomaly model (score and anomaly map).

Usage: python3 tools/build_patchcore_backbone.py   (needs onnx, onnxruntime, numpy)
"""

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "models/parts-classifier/model.onnx"
OUT = ROOT / "models/patchcore-backbone"
INPUT = 64
TRUNK_END = "r3"


def build() -> onnx.ModelProto:
    source = onnx.load(SOURCE)
    nodes, needed = [], set()
    for node in source.graph.node:
        nodes.append(node)
        needed.update(node.input)
        if TRUNK_END in node.output:
            break
    else:
        raise SystemExit(f"{SOURCE} has no tensor {TRUNK_END}")
    inits = [i for i in source.graph.initializer if i.name in needed]
    pool = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=0)
    nodes += [
        helper.make_node("AveragePool", ["r2"], ["a2"], **pool),
        helper.make_node("AveragePool", ["r3"], ["a3"], **pool),
        helper.make_node("Resize", ["a3", "", "up_scales"], ["u3"], mode="nearest"),
        helper.make_node("Concat", ["a2", "u3"], ["features"], axis=1),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"))
    graph = helper.make_graph(
        nodes, "patchcore_backbone",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 64, INPUT // 4, INPUT // 4])],
        inits)
    model = helper.make_model(graph, producer_name="stationd tools/build_patchcore_backbone.py",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    model = build()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "model.onnx").write_bytes(model.SerializeToString())
    (OUT / "backbone.toml").write_text(f'''# PatchCore backbone: the conv trunk of models/parts-classifier (r2 and r3, 3x3 averaged,
# concatenated on the 16x16 grid). Built by tools/build_patchcore_backbone.py; do not edit
# by hand. stationd fits anomaly models on it (POST /api/v1/anomaly/fits).
name = "patchcore-backbone"
version = "1.0.0"
description = "Conv trunk of parts-classifier 1.0.0: 64 features per 4x4-pixel patch of a 64x64 image"

[input]
width = {INPUT}
height = {INPUT}
mean = [0.45, 0.45, 0.45]
std = [0.25, 0.25, 0.25]
''')
    import onnxruntime as ort
    session = ort.InferenceSession(str(OUT / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": np.zeros((1, 3, INPUT, INPUT), np.float32)})[0]
    print(f"wrote {OUT}: features {list(out.shape)}, {(OUT / 'model.onnx').stat().st_size} bytes")


if __name__ == "__main__":
    main()
