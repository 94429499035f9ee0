#!/usr/bin/env python3
"""Build the bundled `parts-classifier` model from images this script synthesises.

The daemon never runs Python: this script is how the project makes the ONNX file it
ships in models/parts-classifier/. It

1. synthesises photos of a machined flange (brushed metal disc with a bore, on a dark
   conveyor) in three classes: `ok`, `scratch` (a thin straight or slightly bent mark)
   and `dent` (a small lit crater), with random pose, lighting, tint and sensor noise,
   all passed through a JPEG round trip like a camera frame;
2. trains a small CNN with JAX (CPU) on a training set, keeps a validation set for
   model selection, and a separate held-out set that is written to disk as JPEG;
3. writes model.onnx by hand with onnx.helper (no exporter needed), checks it with
   onnx.checker and onnxruntime, measures held-out accuracy by running the *files on
   disk* through onnxruntime, and records the figure in model.toml.

The Rust test `model::heldout_accuracy` runs the same held-out files through tract.

Usage (from the repository root):
    python3 -m venv /tmp/mlenv && /tmp/mlenv/bin/pip install jax onnx onnxruntime pillow numpy
    /tmp/mlenv/bin/python tools/train_parts_classifier.py
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pathlib
import sys
import time

import numpy as np
from PIL import Image

LABELS = ["ok", "scratch", "dent"]
FRAME = 128  # synthetic camera frame, pixels
INPUT = 64  # model input, pixels
MEAN = [0.45, 0.45, 0.45]
STD = [0.25, 0.25, 0.25]


# --------------------------------------------------------------------------- images


def synth_part(rng: np.random.Generator, label: str) -> Image.Image:
    """One synthetic camera frame of a flange, with the requested defect."""
    n = FRAME
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    # Conveyor belt: dark, slightly textured.
    img = 45 + rng.normal(0, 4, (n, n)).astype(np.float32)
    img += 6 * np.sin(xx / rng.uniform(3, 6))
    cx = n / 2 + rng.uniform(-8, 8)
    cy = n / 2 + rng.uniform(-8, 8)
    r_out = rng.uniform(40, 50)
    r_in = rng.uniform(9, 14)
    d = np.hypot(xx - cx, yy - cy)
    disc = d <= r_out
    hole = d <= r_in
    # Brushed metal: a lighting gradient plus streaks along a random direction.
    ang = rng.uniform(0, math.pi)
    g = (xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)
    metal = rng.uniform(150, 185) + g * rng.uniform(0.2, 0.5)
    streak_dir = rng.uniform(0, math.pi)
    s = (xx * math.cos(streak_dir) + yy * math.sin(streak_dir)).astype(np.int32)
    streaks = rng.normal(0, 5, 4 * n)[np.clip(s + 2 * n, 0, 4 * n - 1)]
    metal = metal + streaks
    # A chamfer ring at the rim.
    metal = np.where(d > r_out - 2.5, metal - 35, metal)
    img = np.where(disc, metal, img)
    img = np.where(hole, 30 + rng.normal(0, 3, (n, n)), img)

    if label == "scratch":
        for _ in range(rng.integers(1, 3)):
            # Keep the mark on the metal: start between the bore and the rim.
            rr = rng.uniform(r_in + 6, r_out - 14)
            th = rng.uniform(0, 2 * math.pi)
            x0, y0 = cx + rr * math.cos(th), cy + rr * math.sin(th)
            phi = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(18, 40)
            bend = rng.uniform(-0.015, 0.015)
            width = rng.uniform(0.9, 1.6)
            tone = rng.choice([-1.0, 1.0]) * rng.uniform(55, 85)
            ts = np.linspace(0, length, int(length * 3))
            px = x0 + ts * np.cos(phi + bend * ts)
            py = y0 + ts * np.sin(phi + bend * ts)
            mask = np.zeros((n, n), np.float32)
            for x, y in zip(px, py):
                dd = np.hypot(xx - x, yy - y)
                mask = np.maximum(mask, np.clip(1.0 - (dd - width / 2), 0, 1))
            img = img + tone * mask * disc * (~hole)
    elif label == "dent":
        for _ in range(rng.integers(1, 3)):
            rr = rng.uniform(r_in + 8, r_out - 8)
            th = rng.uniform(0, 2 * math.pi)
            dx, dy = cx + rr * math.cos(th), cy + rr * math.sin(th)
            rad = rng.uniform(4.5, 8.5)
            light = rng.uniform(0, 2 * math.pi)
            dd = np.hypot(xx - dx, yy - dy)
            inside = np.clip(1 - dd / rad, 0, 1)
            # A crater lit from one side: bright rim on one flank, shadow on the other.
            shade = ((xx - dx) * math.cos(light) + (yy - dy) * math.sin(light)) / rad
            img = img + (rng.uniform(45, 75) * shade * (inside > 0) * (1 - inside * 0.3)
                         - rng.uniform(15, 30) * inside) * disc

    # Camera: exposure, white balance tint, noise, blur-free; then JPEG.
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 3, (n, n))
    tint = rng.uniform(0.92, 1.08, 3)
    rgb = np.clip(img[..., None] * tint[None, None, :], 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=int(rng.integers(80, 95)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def to_tensor(img: Image.Image) -> np.ndarray:
    """Preprocessing identical to stationd's: bilinear resize, /255, per-channel norm, NCHW."""
    small = img.convert("RGB").resize((INPUT, INPUT), Image.BILINEAR)
    a = np.asarray(small, np.float32) / 255.0
    a = (a - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return a.transpose(2, 0, 1)


def make_set(rng, per_class):
    xs, ys, imgs = [], [], []
    for ci, label in enumerate(LABELS):
        for _ in range(per_class):
            im = synth_part(rng, label)
            imgs.append(im)
            xs.append(to_tensor(im))
            ys.append(ci)
    return np.stack(xs), np.array(ys, np.int32), imgs


# --------------------------------------------------------------------------- model

CONVS = [(3, 8), (8, 16), (16, 32), (32, 32)]  # (in, out) channels, 3x3, pad 1


def init_params(key):
    import jax

    params = []
    for cin, cout in CONVS:
        key, k = jax.random.split(key)
        w = jax.random.normal(k, (cout, cin, 3, 3)) * math.sqrt(2.0 / (cin * 9))
        params.append((w, np.zeros(cout, np.float32)))
    key, k = jax.random.split(key)
    feat = CONVS[-1][1] * 2  # global avg ++ global max
    fc = jax.random.normal(k, (feat, len(LABELS))) * math.sqrt(1.0 / feat)
    params.append((fc, np.zeros(len(LABELS), np.float32)))
    return params


def forward(params, x):
    import jax
    import jax.numpy as jnp

    for i, (w, b) in enumerate(params[:-1]):
        x = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        x = jax.nn.relu(x + b[None, :, None, None])
        if i < len(params) - 2:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    feat = jnp.concatenate([x.mean(axis=(2, 3)), x.max(axis=(2, 3))], axis=1)
    w, b = params[-1]
    return feat @ w + b


def train(xtr, ytr, xva, yva, epochs, seed):
    import jax
    import jax.numpy as jnp

    params = init_params(jax.random.PRNGKey(seed))

    def loss_fn(p, x, y):
        logits = forward(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])

    # Adam, written out: four lines do not justify a dependency.
    lr, b1, b2, eps = 3e-3, 0.9, 0.999, 1e-8
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)

    @jax.jit
    def step(p, m, v, t, x, y, lr_t):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        m = jax.tree_util.tree_map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
        mh = jax.tree_util.tree_map(lambda a: a / (1 - b1 ** t), m)
        vh = jax.tree_util.tree_map(lambda a: a / (1 - b2 ** t), v)
        p = jax.tree_util.tree_map(lambda a, b, c: a - lr_t * b / (jnp.sqrt(c) + eps), p, mh, vh)
        return p, m, v, loss

    predict = jax.jit(lambda p, x: jnp.argmax(forward(p, x), axis=1))
    rng = np.random.default_rng(seed)
    batch, t = 64, 0
    best = (-1.0, params)
    for epoch in range(epochs):
        order = rng.permutation(len(xtr))
        lr_t = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))  # cosine decay
        losses = []
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            xb = xtr[idx]
            # Augment: flips and 90-degree turns keep the part a valid part.
            if rng.random() < 0.5:
                xb = xb[:, :, :, ::-1]
            if rng.random() < 0.5:
                xb = xb[:, :, ::-1, :]
            xb = np.rot90(xb, int(rng.integers(0, 4)), axes=(2, 3))
            t += 1
            params, m, v, loss = step(params, m, v, t, jnp.asarray(np.ascontiguousarray(xb)),
                                      jnp.asarray(ytr[idx]), lr_t)
            losses.append(float(loss))
        acc = float(np.mean(np.asarray(predict(params, jnp.asarray(xva))) == yva))
        print(f"epoch {epoch + 1:2d}/{epochs} loss {np.mean(losses):.4f} val_acc {acc:.4f}", flush=True)
        if acc >= best[0]:
            best = (acc, jax.tree_util.tree_map(np.asarray, params))
    return best


# --------------------------------------------------------------------------- onnx


def export_onnx(params, path: pathlib.Path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "image"
    for i, (w, b) in enumerate(params[:-1]):
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"conv{i}.w"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"conv{i}.b")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
        if i < len(params) - 2:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("GlobalMaxPool", [x], ["gmp"]),
        helper.make_node("Concat", ["gap", "gmp"], ["cat"], axis=1),
        helper.make_node("Flatten", ["cat"], ["feat"], axis=1),
    ]
    w, b = params[-1]
    inits += [numpy_helper.from_array(np.asarray(w, np.float32), "fc.w"),
              numpy_helper.from_array(np.asarray(b, np.float32), "fc.b")]
    nodes += [helper.make_node("Gemm", ["feat", "fc.w", "fc.b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "parts_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(LABELS)])],
        inits)
    model = helper.make_model(graph, producer_name="stationd tools/train_parts_classifier.py",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def write_model_toml(path: pathlib.Path, accuracy: float, n: int, per_class: dict, train_n: int):
    text = f"""# Bundled classifier for machined flanges: ok / scratch / dent.
# Built by tools/train_parts_classifier.py from images it synthesises; do not edit by hand
# (re-run the script). stationd reads this file next to model.onnx.
name = "parts-classifier"
version = "1.0.0"
task = "classification"
description = "Small CNN (4 conv layers, ~15k parameters) judging a flange photo as ok, scratch or dent."

[input]
width = {INPUT}
height = {INPUT}
# Pixels are scaled to 0..1, then (x - mean) / std per RGB channel, laid out NCHW.
mean = {json.dumps(MEAN)}
std = {json.dumps(STD)}

[output]
# "probabilities" (softmax inside the graph) or "logits".
kind = "probabilities"
labels = {json.dumps(LABELS)}
# Labels that mean the part is good; every other label is a defect class.
pass_labels = ["ok"]

[thresholds]
# P(pass labels) >= pass_threshold -> pass; <= fail_threshold -> fail; between -> uncertain.
pass_threshold = 0.80
fail_threshold = 0.20

[metrics]
heldout_accuracy = {accuracy:.4f}
heldout_samples = {n}
heldout_per_class_accuracy = {{ {", ".join(f'{k} = {v:.4f}' for k, v in per_class.items())} }}
training_samples = {train_n}
"""
    path.write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/parts-classifier")
    ap.add_argument("--samples-out", default="examples/parts")
    ap.add_argument("--train-per-class", type=int, default=2500)
    ap.add_argument("--heldout-per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    out = pathlib.Path(args.out)
    heldout_dir = out / "heldout"
    samples_dir = pathlib.Path(args.samples_out)
    for d in (out, heldout_dir, samples_dir):
        d.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    xtr, ytr, _ = make_set(rng, args.train_per_class)
    xva, yva, _ = make_set(rng, 150)
    # Held-out images come from their own generator stream and are never seen in training.
    _, yho, ho_imgs = make_set(np.random.default_rng(args.seed + 1000), args.heldout_per_class)
    print(f"synthesised {len(xtr)} train, {len(xva)} val, {len(yho)} held-out in {time.time() - t0:.0f}s")

    val_acc, params = train(xtr, ytr, xva, yva, args.epochs, args.seed)
    print(f"best val_acc {val_acc:.4f}")
    export_onnx(params, out / "model.onnx")

    for old in list(heldout_dir.glob("*.jpg")) + list(samples_dir.glob("*.jpg")):
        old.unlink()
    counters = {l: 0 for l in LABELS}
    for im, y in zip(ho_imgs, yho):
        label = LABELS[y]
        counters[label] += 1
        im.save(heldout_dir / f"{label}_{counters[label]:03d}.jpg", "JPEG", quality=92)
    # A handful of frames for the simulated camera, from yet another stream.
    srng = np.random.default_rng(args.seed + 2000)
    for i in range(12):
        label = LABELS[i % 3] if i % 4 else "ok"
        synth_part(srng, label).save(samples_dir / f"{i:02d}_{label}.jpg", "JPEG", quality=92)

    # Accuracy measured on the files as written, through onnxruntime: what tract must match.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    correct, per = 0, {l: [0, 0] for l in LABELS}
    files = sorted(heldout_dir.glob("*.jpg"))
    for f in files:
        label = f.name.split("_")[0]
        x = to_tensor(Image.open(f))[None]
        p = sess.run(None, {"image": x})[0][0]
        ok = LABELS[int(np.argmax(p))] == label
        correct += ok
        per[label][0] += ok
        per[label][1] += 1
    acc = correct / len(files)
    per_class = {l: c / n for l, (c, n) in per.items()}
    print(f"held-out accuracy (onnxruntime, files on disk): {acc:.4f} {per_class}")
    write_model_toml(out / "model.toml", acc, len(files), per_class, len(xtr))
    if acc < 0.95:
        print("held-out accuracy below 0.95: not good enough to ship", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
