#!/usr/bin/env python3
"""Build the bundled `kit-detector` model from images this script synthesises.

A kit tray (the order-accuracy use): the camera looks down at a tray holding bolts, nuts
and washers, and sometimes debris (a foreign object, a defect). The detector finds each
object, so that stationd can count the kit against its expected items. The script

1. synthesises 96x96 tray photos with 0-6 objects at random places, poses, sizes and
   lighting, with their boxes, all through a JPEG round trip like a camera frame;
2. trains a small fully convolutional grid detector with JAX (CPU): a 12x12 grid (stride
   8), per cell a box (centre offset, log size) and one sigmoid score per class;
3. writes model.onnx with onnx.helper, decoding inside the graph to the YOLOv8 head stationd
   reads: `[1, 4 + classes, 144]` with the box centre and size in input pixels and the
   class scores (no NMS in the graph: stationd does it in Rust);
4. measures on a held-out set written to disk (through onnxruntime, with stationd's
   decoding: score >= 0.25, per-class NMS at IoU 0.45) the precision and recall at IoU 0.5
   and the share of images whose per-class counts are all right, and records them in
   model.toml.

The Rust test `model::bundled_detector_heldout_counts` re-measures the counts with tract.

Usage (from the repository root):
    python3 -m venv /tmp/mlenv && /tmp/mlenv/bin/pip install jax onnx onnxruntime pillow numpy
    /tmp/mlenv/bin/python tools/train_kit_detector.py
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
from PIL import Image, ImageDraw

LABELS = ["bolt", "nut", "washer", "debris"]
DEFECTS = ["debris"]
SIZE = 96  # camera frame and model input, pixels
STRIDE = 8
GRID = SIZE // STRIDE
MEAN = [0.5, 0.5, 0.5]
STD = [0.25, 0.25, 0.25]
CONFIDENCE, IOU = 0.25, 0.45


# --------------------------------------------------------------------------- images


def draw_object(draw: ImageDraw.ImageDraw, rng, label: str, cx: float, cy: float):
    """Draws one object; returns its box [x1, y1, x2, y2]."""
    grey = rng.uniform(150, 215)
    metal = tuple(int(min(255, grey * t)) for t in rng.uniform(0.92, 1.08, 3))
    dark = tuple(int(v * 0.55) for v in metal)
    if label == "bolt":
        length, width = rng.uniform(16, 24), rng.uniform(4, 6)
        angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=metal, width=int(width))
        hx, hy = cx - dx, cy - dy
        head = width * 0.9
        draw.rectangle([hx - head, hy - head, hx + head, hy + head], fill=dark)
        xs = [cx - dx, cx + dx, hx - head, hx + head]
        ys = [cy - dy, cy + dy, hy - head, hy + head]
        pad = width / 2
        return [min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad]
    if label == "nut":
        r = rng.uniform(6, 9)
        rot = rng.uniform(0, math.pi / 3)
        pts = [(cx + r * math.cos(rot + k * math.pi / 3), cy + r * math.sin(rot + k * math.pi / 3)) for k in range(6)]
        draw.polygon(pts, fill=metal, outline=dark)
        h = r * 0.45
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=(35, 35, 35))
        return [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)]
    if label == "washer":
        r = rng.uniform(6, 10)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=metal, outline=dark)
        h = r * rng.uniform(0.45, 0.6)
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=(35, 35, 35))
        return [cx - r, cy - r, cx + r, cy + r]
    # debris: an irregular dark-brown blob
    n = int(rng.integers(5, 9))
    r = rng.uniform(3, 7)
    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        rr = r * rng.uniform(0.6, 1.3)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    colour = tuple(int(v) for v in (rng.uniform(60, 110), rng.uniform(35, 60), rng.uniform(10, 30)))
    draw.polygon(pts, fill=colour)
    return [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)]


def synth_tray(rng):
    """One tray photo and its objects [(label index, box)]."""
    base = rng.uniform(85, 125)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    tray = base + (xx - SIZE / 2) * rng.uniform(-0.3, 0.3) + rng.normal(0, 3, (SIZE, SIZE))
    tint = rng.uniform(0.9, 1.1, 3)
    rgb = np.clip(tray[..., None] * tint[None, None, :], 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(img)
    objects, centres = [], []
    for _ in range(int(rng.integers(0, 7))):
        for _attempt in range(20):
            cx, cy = rng.uniform(12, SIZE - 12, 2)
            if all(math.hypot(cx - x, cy - y) >= 20 for x, y in centres):
                break
        else:
            continue
        label = int(rng.choice(len(LABELS), p=[0.3, 0.27, 0.27, 0.16]))
        box = draw_object(draw, rng, LABELS[label], cx, cy)
        box = [max(0.0, box[0]), max(0.0, box[1]), min(SIZE, box[2]), min(SIZE, box[3])]
        centres.append((cx, cy))
        objects.append((label, box))
    arr = np.asarray(img, np.float32) * rng.uniform(0.85, 1.15) + rng.normal(0, 3, (SIZE, SIZE, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=int(rng.integers(80, 95)))
    buf.seek(0)
    return Image.open(buf).convert("RGB"), objects


def to_tensor(img: Image.Image) -> np.ndarray:
    """stationd's preprocessing: /255, per-channel norm, NCHW (the frame is already 96x96)."""
    a = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255.0
    return ((a - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1)


def targets(objects):
    """Per cell: class one-hot [C, G, G], box [4, G, G] (offsets in cell, log size / stride), mask [G, G]."""
    cls = np.zeros((len(LABELS), GRID, GRID), np.float32)
    box = np.zeros((4, GRID, GRID), np.float32)
    mask = np.zeros((GRID, GRID), np.float32)
    for label, (x1, y1, x2, y2) in objects:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        gx, gy = min(int(cx // STRIDE), GRID - 1), min(int(cy // STRIDE), GRID - 1)
        cls[label, gy, gx] = 1.0
        box[:, gy, gx] = [cx / STRIDE - gx, cy / STRIDE - gy, math.log((x2 - x1) / STRIDE), math.log((y2 - y1) / STRIDE)]
        mask[gy, gx] = 1.0
    return cls, box, mask


def make_set(rng, n):
    xs, cls, boxes, masks, imgs, objs = [], [], [], [], [], []
    for _ in range(n):
        img, objects = synth_tray(rng)
        c, b, m = targets(objects)
        xs.append(to_tensor(img))
        cls.append(c)
        boxes.append(b)
        masks.append(m)
        imgs.append(img)
        objs.append(objects)
    return np.stack(xs), np.stack(cls), np.stack(boxes), np.stack(masks), imgs, objs


# --------------------------------------------------------------------------- model

CONVS = [(3, 16), (16, 32), (32, 48), (48, 64)]  # 3x3, pad 1; max pool after the first three
HEAD = 4 + len(LABELS)


def init_params(key):
    import jax

    params = []
    for cin, cout in CONVS:
        key, k = jax.random.split(key)
        params.append((jax.random.normal(k, (cout, cin, 3, 3)) * math.sqrt(2.0 / (cin * 9)), np.zeros(cout, np.float32)))
    key, k = jax.random.split(key)
    w = jax.random.normal(k, (HEAD, CONVS[-1][1], 1, 1)) * 0.01
    b = np.zeros(HEAD, np.float32)
    b[4:] = -4.0  # rare positives: start with low scores
    params.append((w, b))
    return params


def forward(params, x):
    """Raw head [N, 4 + C, G, G]."""
    import jax

    for i, (w, b) in enumerate(params[:-1]):
        x = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
        x = jax.nn.relu(x + b[None, :, None, None])
        if i < 3:
            x = jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    w, b = params[-1]
    x = jax.lax.conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return x + b[None, :, None, None]


def train(data, epochs, seed):
    import jax
    import jax.numpy as jnp

    xtr, ctr, btr, mtr = data
    params = init_params(jax.random.PRNGKey(seed))

    def loss_fn(p, x, c, b, m):
        raw = forward(p, x)
        logits = raw[:, 4:]
        # Focal-weighted BCE: most cells are background.
        prob = jax.nn.sigmoid(logits)
        bce = jnp.maximum(logits, 0) - logits * c + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        focal = jnp.where(c > 0, (1 - prob) ** 2 * 4.0, prob ** 2)
        cls_loss = jnp.sum(bce * focal) / jnp.maximum(jnp.sum(m), 1.0)
        xy = jax.nn.sigmoid(raw[:, 0:2])
        wh = raw[:, 2:4]
        box_loss = (jnp.sum(jnp.abs(xy - b[:, 0:2]) * m[:, None]) + jnp.sum(jnp.abs(wh - b[:, 2:4]) * m[:, None]))
        return cls_loss + 2.0 * box_loss / jnp.maximum(jnp.sum(m), 1.0)

    lr, b1, b2, eps = 3e-3, 0.9, 0.999, 1e-8
    m1 = jax.tree_util.tree_map(jnp.zeros_like, params)
    v1 = jax.tree_util.tree_map(jnp.zeros_like, params)

    @jax.jit
    def step(p, m, v, t, x, c, b, mk, lr_t):
        loss, g = jax.value_and_grad(loss_fn)(p, x, c, b, mk)
        m = jax.tree_util.tree_map(lambda a, g_: b1 * a + (1 - b1) * g_, m, g)
        v = jax.tree_util.tree_map(lambda a, g_: b2 * a + (1 - b2) * g_ * g_, v, g)
        mh = jax.tree_util.tree_map(lambda a: a / (1 - b1 ** t), m)
        vh = jax.tree_util.tree_map(lambda a: a / (1 - b2 ** t), v)
        p = jax.tree_util.tree_map(lambda a, m_, v_: a - lr_t * m_ / (jnp.sqrt(v_) + eps), p, mh, vh)
        return p, m, v, loss

    rng = np.random.default_rng(seed)
    batch, t = 32, 0
    for epoch in range(epochs):
        order = rng.permutation(len(xtr))
        lr_t = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        losses = []
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            t += 1
            params, m1, v1, loss = step(params, m1, v1, t, jnp.asarray(xtr[idx]), jnp.asarray(ctr[idx]),
                                        jnp.asarray(btr[idx]), jnp.asarray(mtr[idx]), lr_t)
            losses.append(float(loss))
        print(f"epoch {epoch + 1:2d}/{epochs} loss {np.mean(losses):.4f}", flush=True)
    return jax.tree_util.tree_map(np.asarray, params)


# --------------------------------------------------------------------------- onnx


def export_onnx(params, path: pathlib.Path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "image"
    for i, (w, b) in enumerate(params[:-1]):
        inits += [numpy_helper.from_array(np.asarray(w, np.float32), f"conv{i}.w"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"conv{i}.b")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
        if i < 3:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
    w, b = params[-1]
    inits += [numpy_helper.from_array(np.asarray(w, np.float32), "head.w"),
              numpy_helper.from_array(np.asarray(b, np.float32), "head.b")]
    nodes.append(helper.make_node("Conv", [x, "head.w", "head.b"], ["raw4d"], kernel_shape=[1, 1]))
    cells = GRID * GRID
    gx, gy = np.meshgrid(np.arange(GRID, dtype=np.float32), np.arange(GRID, dtype=np.float32))
    grid = np.stack([gx.reshape(-1), gy.reshape(-1)])[None]  # [1, 2, cells], row-major cells
    consts = {
        "shape": np.array([1, HEAD, cells], np.int64),
        "grid": grid.astype(np.float32),
        "stride": np.array(STRIDE, np.float32),
        "s0": np.array([0], np.int64), "s2": np.array([2], np.int64), "s4": np.array([4], np.int64),
        "send": np.array([HEAD], np.int64), "axis1": np.array([1], np.int64),
    }
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    nodes += [
        helper.make_node("Reshape", ["raw4d", "shape"], ["raw"]),
        helper.make_node("Slice", ["raw", "s0", "s2", "axis1"], ["txy"]),
        helper.make_node("Slice", ["raw", "s2", "s4", "axis1"], ["twh"]),
        helper.make_node("Slice", ["raw", "s4", "send", "axis1"], ["tcls"]),
        helper.make_node("Sigmoid", ["txy"], ["sxy"]),
        helper.make_node("Add", ["sxy", "grid"], ["gxy"]),
        helper.make_node("Mul", ["gxy", "stride"], ["xy"]),
        helper.make_node("Exp", ["twh"], ["ewh"]),
        helper.make_node("Mul", ["ewh", "stride"], ["wh"]),
        helper.make_node("Sigmoid", ["tcls"], ["scores"]),
        helper.make_node("Concat", ["xy", "wh", "scores"], ["detections"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "kit_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, HEAD, cells])],
        inits)
    model = helper.make_model(graph, producer_name="stationd tools/train_kit_detector.py",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


# --------------------------------------------------------------------------- evaluation


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def decode(head):
    """stationd's decoding (inference/detect.rs): best class, score threshold, per-class NMS."""
    found = []
    for n in range(head.shape[1]):
        c = int(np.argmax(head[4:, n]))
        score = float(head[4 + c, n])
        if score < CONFIDENCE:
            continue
        cx, cy, w, h = (float(v) for v in head[:4, n])
        found.append((c, score, [max(0, cx - w / 2), max(0, cy - h / 2), min(SIZE, cx + w / 2), min(SIZE, cy + h / 2)]))
    found.sort(key=lambda f: -f[1])
    kept = []
    for f in found:
        if all(k[0] != f[0] or iou(k[2], f[2]) <= IOU for k in kept):
            kept.append(f)
    return kept


def file_name(index, objects):
    counts = [sum(1 for o in objects if o[0] == c) for c in range(len(LABELS))]
    return f"{index:03d}_" + "_".join(f"{LABELS[c]}{n}" for c, n in enumerate(counts)) + ".jpg"


def write_model_toml(path, metrics):
    text = f"""# Bundled detector for kit trays: bolts, nuts, washers, and debris (a defect).
# Built by tools/train_kit_detector.py from images it synthesises; do not edit by hand
# (re-run the script). stationd reads this file next to model.onnx.
name = "kit-detector"
version = "1.0.0"
task = "detection"
description = "Small grid detector (5 conv layers, 12x12 cells) finding the parts in a kit tray, for expected-items checks."

[input]
width = {SIZE}
height = {SIZE}
mean = {json.dumps(MEAN)}
std = {json.dumps(STD)}

[output]
# YOLOv8 head [1, 4 + classes, 144]: box centre and size in input pixels, class scores.
kind = "yolov8"
labels = {json.dumps(LABELS)}
# Classes that are defects: a detection of one fails (or makes uncertain) the part.
defect_labels = {json.dumps(DEFECTS)}
confidence_threshold = {CONFIDENCE}
iou_threshold = {IOU}
max_detections = 50

[thresholds]
# A defect detection scoring >= fail_threshold fails the part; from pass_threshold up, uncertain.
pass_threshold = 0.35
fail_threshold = 0.60

[metrics]
heldout_samples = {metrics["samples"]}
heldout_objects = {metrics["objects"]}
heldout_precision_iou50 = {metrics["precision"]:.4f}
heldout_recall_iou50 = {metrics["recall"]:.4f}
# Share of held-out trays whose count of every class is exactly right.
heldout_count_accuracy = {metrics["count_accuracy"]:.4f}
training_samples = {metrics["training"]}
"""
    path.write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/kit-detector")
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--heldout", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    out = pathlib.Path(args.out)
    heldout_dir = out / "heldout"
    heldout_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    xtr, ctr, btr, mtr, _, _ = make_set(np.random.default_rng(args.seed), args.train)
    _, _, _, _, ho_imgs, ho_objs = make_set(np.random.default_rng(args.seed + 1000), args.heldout)
    print(f"synthesised {len(xtr)} train and {len(ho_imgs)} held-out trays in {time.time() - t0:.0f}s", flush=True)
    params = train((xtr, ctr, btr, mtr), args.epochs, args.seed)
    export_onnx(params, out / "model.onnx")

    for old in heldout_dir.glob("*.jpg"):
        old.unlink()
    for i, (img, objects) in enumerate(zip(ho_imgs, ho_objs)):
        img.save(heldout_dir / file_name(i, objects), "JPEG", quality=92)

    # Measured on the files as written, through onnxruntime, with stationd's decoding.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tp = fp = objects_total = counts_right = 0
    files = sorted(heldout_dir.glob("*.jpg"))
    for f, objects in zip(files, ho_objs):
        head = sess.run(None, {"image": to_tensor(Image.open(f))[None]})[0][0]
        found = decode(head)
        objects_total += len(objects)
        unmatched = list(objects)
        for c, _score, box in found:
            match = next((o for o in unmatched if o[0] == c and iou(o[1], box) >= 0.5), None)
            if match is not None:
                unmatched.remove(match)
                tp += 1
            else:
                fp += 1
        counts = [sum(1 for d in found if d[0] == c) for c in range(len(LABELS))]
        expected = [sum(1 for o in objects if o[0] == c) for c in range(len(LABELS))]
        counts_right += counts == expected
    metrics = {
        "samples": len(files),
        "objects": objects_total,
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(objects_total, 1),
        "count_accuracy": counts_right / len(files),
        "training": len(xtr),
    }
    print(f"held-out (onnxruntime, files on disk): {metrics}")
    write_model_toml(out / "model.toml", metrics)
    if metrics["count_accuracy"] < 0.85 or metrics["recall"] < 0.9:
        print("held-out figures too low to ship", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
