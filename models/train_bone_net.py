#!/usr/bin/env python3
"""Train telecho's bone-surface and landmark network on simulated B-mode frames; export ONNX.

The data comes from `telecho perception dataset` (see models/README.md for the recipe): frames of
simulated patients whose seeds are never used for evaluation. The network is a small U-Net-like
encoder/decoder with additive skips, built to run in about 3 ms per 256 x 256 frame on one CPU
core through tract:

    input  `image`     1 x 1 x 256 x 256 float32, grey level / 255
    output `bone`      1 x 1 x 128 x 128 float32, probability of the bone surface
    output `landmarks` 1 x 4 x 128 x 128 float32, heatmaps of spinous tip, lamina, facet,
                       transverse process

Half-resolution output pixel (i, j) stands for full-resolution position (row, col) =
(2 i + 0.5, 2 j + 0.5). Targets: per column a Gaussian ridge (sigma 1 output pixel) around the
bone-surface row; per landmark a Gaussian (sigma 1.5 output pixels = 3 input pixels) peaking at 1
on the nearest output pixel. Losses: weighted BCE for the bone map and for the heatmaps (weight
1 + 100 t; `--landmark-loss focal` selects the penalty-reduced focal loss of CornerNet/CenterNet,
Law & Deng 2018, Zhou et al. 2019, which learned too slowly on a CPU budget), with the heatmap
loss switched off around landmarks that are in the frame but not visible (`ignore` in
labels.json).

Usage:
    python3 models/train_bone_net.py train --data DIR --out models/bone_net.onnx [--minutes 25]
    python3 models/train_bone_net.py thresholds --data DIR [--model models/bone_net.onnx]
    python3 models/train_bone_net.py export-untrained --out /tmp/untrained.onnx
"""

import argparse
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CLASSES = ["spinous_tip", "lamina", "facet", "transverse_process"]
H = W = 256
STRIDE = 2
OH, OW = H // STRIDE, W // STRIDE
SIGMA = 1.0  # output pixels, bone ridge
LM_SIGMA = [1.5]  # output pixels, landmark Gaussians (set from --landmark-sigma)
# Radius (rows, columns; output pixels) around ignored landmarks without heatmap loss: the 3 mm
# match tolerance of the evaluation at 70/255 mm x 38/255 mm input pixels.
IGNORE_RADIUS_PX = (3e-3 / (STRIDE * 0.070 / 255), 3e-3 / (STRIDE * 0.038 / 255))
ROOT = Path(__file__).resolve().parent.parent
# Sources that decide what the dataset contains (hashed into the sidecar).
DATASET_CODE = [
    "sim/src/dataset.rs",
    "sim/src/ultrasound.rs",
    "sim/src/phantom.rs",
    "src/perception/dataset.rs",
]


# ----------------------------------------------------------------------------------------------
# Network


class ConvBnRelu(nn.Sequential):
    def __init__(self, cin, cout, stride=1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class BoneNet(nn.Module):
    """U-Net-like encoder/decoder with additive skips.

    Encoder: 3x3 stride-2 convolutions 256 -> 128 (8 ch) -> 64 (w0) -> 32 (w1) -> 16 (w2) -> 8 (w3),
    one more 3x3 convolution at each level from 64 down. Decoder: 2x2 stride-2 transposed
    convolutions back up, added to the encoder features of the same level, a 3x3 convolution at
    16 and 32; at 128 the 1x1 heads. Stride-2 convolutions and transposed convolutions instead
    of pooling and Resize, BatchNorm folded into the convolutions at export: what tract runs
    fastest (about 3 ms per frame on one core)."""

    def __init__(self, widths=(16, 32, 48, 64)):
        super().__init__()
        a, b, c, d = widths
        self.widths = widths
        self.s1 = ConvBnRelu(1, 8, 2)  # 128
        self.d2 = ConvBnRelu(8, a, 2)  # 64
        self.e2 = ConvBnRelu(a, a)
        self.d3 = ConvBnRelu(a, b, 2)  # 32
        self.e3 = ConvBnRelu(b, b)
        self.d4 = ConvBnRelu(b, c, 2)  # 16
        self.e4 = ConvBnRelu(c, c)
        self.d5 = ConvBnRelu(c, d, 2)  # 8
        self.e5 = ConvBnRelu(d, d)
        self.up4 = nn.ConvTranspose2d(d, c, 2, 2)
        self.u4 = ConvBnRelu(c, c)
        self.up3 = nn.ConvTranspose2d(c, b, 2, 2)
        self.u3 = ConvBnRelu(b, b)
        self.up2 = nn.ConvTranspose2d(b, a, 2, 2)
        self.up1 = nn.ConvTranspose2d(a, 8, 2, 2)
        self.bone = nn.Conv2d(8, 1, 1)
        self.landmarks = nn.Conv2d(8, len(CLASSES), 1)
        # Heads start near "nothing here" (CenterNet's prior).
        nn.init.constant_(self.landmarks.bias, -4.0)
        nn.init.constant_(self.bone.bias, -3.0)

    def logits(self, x):
        x1 = self.s1(x)
        x2 = self.e2(self.d2(x1))
        x3 = self.e3(self.d3(x2))
        x4 = self.e4(self.d4(x3))
        x5 = self.e5(self.d5(x4))
        y = self.u4(F.relu(x4 + self.up4(x5)))
        y = self.u3(F.relu(x3 + self.up3(y)))
        y = F.relu(x2 + self.up2(y))
        y = F.relu(x1 + self.up1(y))
        return self.bone(y), self.landmarks(y)

    def forward(self, x):
        b, l = self.logits(x)
        return torch.sigmoid(b), torch.sigmoid(l)


def export(model, path):
    model = model.eval()
    x = torch.rand(1, 1, H, W)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["image"],
        output_names=["bone", "landmarks"],
        opset_version=17,
        dynamo=False,
        do_constant_folding=True,
    )
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    return m


def load_onnx_weights(model, path):
    """Starts `model` from an exported BoneNet: its folded convolutions go into the convolutions
    and each BatchNorm becomes the identity plus the folded bias (running mean 0, variance
    1 - eps, scale 1). Fine-tuning then runs with BatchNorm frozen (`freeze_bn`), so the network
    computes what the file does."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    loaded = 0
    with torch.no_grad():
        for n in m.graph.node:
            if n.op_type not in ("Conv", "ConvTranspose"):
                continue
            name = n.name.split("/")[1]
            w, b = (torch.from_numpy(init[x].copy()) for x in n.input[1:3])
            mod = getattr(model, name)
            if isinstance(mod, ConvBnRelu):
                conv, bn = mod[0], mod[1]
                conv.weight.copy_(w)
                bn.weight.fill_(1.0)
                bn.bias.copy_(b)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            else:
                mod.weight.copy_(w)
                mod.bias.copy_(b)
            loaded += 1
    if loaded != 17:
        sys.exit(f"{path}: {loaded} convolutions, a BoneNet export has 17")


def freeze_bn(model):
    """BatchNorm layers in eval mode (running statistics fixed); the rest trains."""
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eval()


# ----------------------------------------------------------------------------------------------
# Data


class Dataset:
    def __init__(self, d):
        d = Path(d)
        self.labels = json.loads((d / "labels.json").read_text())
        n, h, w = self.labels["count"], self.labels["height"], self.labels["width"]
        assert (h, w) == (H, W), f"frames are {h}x{w}, the network takes {H}x{W}"
        self.images = np.fromfile(d / "images.u8", np.uint8).reshape(n, h, w)
        self.rows = np.fromfile(d / "bone_rows.f32", "<f4").reshape(n, w)
        self.frames = self.labels["frames"]
        self.seeds = np.array([f["seed"] for f in self.frames])

    def landmarks(self, i, key="landmarks"):
        """(class, row, col) array of frame i's visible landmarks (or its `ignore` list)."""
        ls = self.frames[i].get(key, [])
        if not ls:
            return np.zeros((0, 3), np.float32)
        return np.array([[l["class"], l["row"], l["col"]] for l in ls], np.float32)


def augment(img, rows, lms, ign, rng):
    """Gain/contrast, speckle-like noise, lateral flip (labels flipped with it), depth shift."""
    img = img.astype(np.float32)
    rows = rows.copy()
    lms = lms.copy()
    ign = ign.copy()
    # Gain and contrast in the log-compressed domain: an offset and a slope of the grey levels.
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-25, 25)
    # Multiplicative speckle-like and additive noise.
    if rng.random() < 0.7:
        img = img * rng.gamma(8.0, 1 / 8.0, img.shape) + rng.normal(0, rng.uniform(0, 8), img.shape)
    # Lateral flip: columns mirror; classes carry no side, so only positions change.
    if rng.random() < 0.5:
        img = img[:, ::-1]
        rows = rows[::-1]
        lms[:, 2] = (W - 1) - lms[:, 2]
        ign[:, 2] = (W - 1) - ign[:, 2]
    # Depth shift by s rows (the probe face moves; the freed rows get a dark noisy floor).
    s = int(rng.integers(-12, 13))
    if s != 0:
        out = np.abs(rng.normal(0, 6, img.shape)).astype(np.float32)
        if s > 0:
            out[s:] = img[:-s]
        else:
            out[:s] = img[-s:]
        img = out
        rows = rows + s
        rows[(rows < 0) | (rows > H - 1)] = np.nan
        lms[:, 1] += s
        ign[:, 1] += s
        keep = (lms[:, 1] >= 0) & (lms[:, 1] <= H - 1)
        lms = lms[keep]
    return np.clip(img, 0, 255), rows, lms, ign


def to_half(v):
    return (v - 0.5) / STRIDE


def targets(rows, lms, ign, h=H, w=W):
    """Bone ridge target (h/2 x w/2), landmark heatmaps (4 x h/2 x w/2), their loss weights."""
    oh, ow = h // STRIDE, w // STRIDE
    yy = np.arange(oh, dtype=np.float32)[:, None]
    xx = np.arange(ow, dtype=np.float32)[None, :]
    # Bone: per output column, the mean of the two input columns' surface rows.
    r2 = rows.reshape(ow, STRIDE)
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(r2)
        cnt = valid.sum(1)
        mean = np.where(cnt > 0, np.where(valid, r2, 0).sum(1) / np.maximum(cnt, 1), np.nan)
    u = to_half(mean)[None, :]
    bone = np.where(np.isnan(u), 0.0, np.exp(-0.5 * ((yy - np.nan_to_num(u)) / SIGMA) ** 2))
    heat = np.zeros((len(CLASSES), oh, ow), np.float32)
    for c, r, col in lms:
        u, v = to_half(r), to_half(col)
        sg = LM_SIGMA[0]
        g = np.exp(-0.5 * (((yy - u) / sg) ** 2 + ((xx - v) / sg) ** 2))
        iu, iv = int(round(u)), int(round(v))
        if 0 <= iu < oh and 0 <= iv < ow:
            g[iu, iv] = 1.0
        heat[int(c)] = np.maximum(heat[int(c)], g)
    # No loss within the match tolerance of a landmark that is in the frame but not visible.
    weight = np.ones_like(heat)
    ry, rx = IGNORE_RADIUS_PX
    for c, r, col in ign:
        u, v = to_half(r), to_half(col)
        near = ((yy - u) / ry) ** 2 + ((xx - v) / rx) ** 2 <= 1.0
        weight[int(c)][near & (heat[int(c)] < 0.5)] = 0.0
    return bone.astype(np.float32), heat, weight


def crop(img, rows, lms, ign, size, rng):
    """A random size x size window at even offsets (so output pixels stay aligned)."""
    r0 = 2 * int(rng.integers(0, (H - size) // 2 + 1))
    c0 = 2 * int(rng.integers(0, (W - size) // 2 + 1))
    img = img[r0 : r0 + size, c0 : c0 + size]
    rows = rows[c0 : c0 + size] - r0
    rows = np.where((rows < 0) | (rows > size - 1), np.nan, rows)

    def shift(a):
        a = a.copy()
        a[:, 1] -= r0
        a[:, 2] -= c0
        keep = (a[:, 1] >= -0.5) & (a[:, 1] <= size - 0.5) & (a[:, 2] >= -0.5) & (a[:, 2] <= size - 0.5)
        return a[keep]

    return img, rows, shift(lms), shift(ign)


def batch(ds, idx, rng, aug=True, size=H):
    xs, bs, hs, ws = [], [], [], []
    for i in idx:
        img, rows, lms, ign = ds.images[i], ds.rows[i], ds.landmarks(i), ds.landmarks(i, "ignore")
        if aug:
            img, rows, lms, ign = augment(img, rows, lms, ign, rng)
        if size < H:
            img, rows, lms, ign = crop(img, rows, lms, ign, size, rng)
        b, h, w = targets(rows, lms, ign, size, size)
        xs.append(np.asarray(img, np.float32) / 255.0)
        bs.append(b)
        hs.append(h)
        ws.append(w)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a)))
    return t(xs)[:, None], t(bs)[:, None], t(hs), t(ws)


# ----------------------------------------------------------------------------------------------
# Loss and decoding


def focal_loss(logits, gt, weight):
    """Penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of peaks."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg = 1 - pos
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p**2 * (1 - gt) ** 4 * neg * weight
    n = pos.sum().clamp(min=1)
    return (pos_loss.sum() + neg_loss.sum()) / n


def heatmap_bce(logits, gt, weight, pos_weight=100.0):
    """BCE against the Gaussian heatmaps, weighted (1 + pos_weight * target) so that the few
    landmark pixels count against the many empty ones; zero weight around ignored landmarks.

    The weight also biases the scores: where a pixel is a landmark with probability q the loss is
    least at p = (1 + w) q / ((1 + w) q + 1 - q), so a large weight (100) lifts ambiguous places
    (q = 0.05) to p = 0.84, close below the true peaks: the landmark threshold sits high (0.8)."""
    w = (1.0 + pos_weight * gt) * weight
    scale = 10.0 * (101.0 / (1.0 + pos_weight)) ** 0.5  # 10 at the default weight
    return (F.binary_cross_entropy_with_logits(logits, gt, reduction="none") * w).mean() * scale


def bone_loss(logits, gt):
    w = 1.0 + 9.0 * gt
    return (F.binary_cross_entropy_with_logits(logits, gt, reduction="none") * w).mean() * 4.0


def peaks(heat, threshold, radius=3):
    """(class, row, col, score) in full-resolution pixels: local maxima over a (2r+1)^2 window
    above threshold, refined by the 3x3 centroid of the heat around them."""
    out = []
    t = torch.from_numpy(heat)[None]
    m = F.max_pool2d(t, 2 * radius + 1, 1, radius)[0].numpy()
    for c in range(heat.shape[0]):
        ys, xs = np.nonzero((heat[c] == m[c]) & (heat[c] >= threshold))
        for y, x in zip(ys, xs):
            y0, y1, x0, x1 = max(y - 1, 0), min(y + 2, OH), max(x - 1, 0), min(x + 2, OW)
            win = heat[c, y0:y1, x0:x1]
            gy, gx = np.mgrid[y0:y1, x0:x1]
            s = win.sum()
            cy, cx = (gy * win).sum() / s, (gx * win).sum() / s
            out.append((c, STRIDE * cy + 0.5, STRIDE * cx + 0.5, float(heat[c, y, x])))
    return out


# Finer where the trained heatmaps peak (about 0.7-0.9).
THRESHOLDS = (0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.72, 0.74, 0.76, 0.78, 0.8, 0.82, 0.84, 0.86,
              0.88, 0.9, 0.95)


def prf(tp, fp, fn):
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    return p, r, 2 * p * r / max(p + r, 1e-9)


def evaluate(model, ds, idx, spacing, thresholds=THRESHOLDS, tol_mm=3.0):
    """Landmark P/R/F1 and median error per threshold on frames idx (no augmentation), overall
    and per class (`counts[c] = [tp, fp, fn]`)."""
    model.eval()
    dets = []
    with torch.no_grad():
        for k in range(0, len(idx), 32):
            x, _, _, _ = batch(ds, idx[k : k + 32], None, aug=False)
            _, lm = model(x)
            dets.extend(lm.numpy())
    lat, ax = spacing
    # Peaks do not depend on the threshold: find them once at the lowest.
    cands = [peaks(heat, min(thresholds)) for heat in dets]
    res = {}
    for th in thresholds:
        counts = np.zeros((len(CLASSES), 3), int)
        errs = []
        for i, cand in zip(idx, cands):
            pred = [p for p in cand if p[3] >= th]
            gt = ds.landmarks(i)
            ign = ds.landmarks(i, "ignore")
            used = np.zeros(len(gt), bool)
            for c, r, col, s in sorted(pred, key=lambda p: -p[3]):
                best, bj = tol_mm, -1
                for j, (gc, gr, gcol) in enumerate(gt):
                    if used[j] or gc != c:
                        continue
                    d = math.hypot((r - gr) * ax, (col - gcol) * lat) * 1e3
                    if d <= best:
                        best, bj = d, j
                if bj >= 0:
                    used[bj] = True
                    counts[c, 0] += 1
                    errs.append(best)
                else:
                    near_ign = any(
                        gc == c and math.hypot((r - gr) * ax, (col - gcol) * lat) * 1e3 <= tol_mm
                        for gc, gr, gcol in ign
                    )
                    counts[c, 1] += 0 if near_ign else 1
            for j in np.nonzero(~used)[0]:
                counts[int(gt[j][0]), 2] += 1
        p, r, f1 = prf(*counts.sum(0))
        res[th] = dict(precision=p, recall=r, f1=f1, median_mm=float(np.median(errs)) if errs else None,
                       counts=counts.tolist())
    model.train()
    return res


# ----------------------------------------------------------------------------------------------
# Commands


def class_f1(val, ths):
    """Overall F1 with threshold ths[c] for class c (classes are scored independently)."""
    tot = sum(np.array(val[t]["counts"][c]) for c, t in enumerate(ths))
    return prf(*tot)[2]


def choose_class_thresholds(val):
    """The per-class thresholds with the best overall F1 on the validation frames (exhaustive
    over the threshold grid; ties go to the higher threshold, the fewer false alarms)."""
    ths = sorted(val)
    best, best_f1 = None, -1.0
    for combo in itertools.product(ths, repeat=len(CLASSES)):
        f1 = class_f1(val, combo)
        if f1 > best_f1 + 1e-12 or (abs(f1 - best_f1) <= 1e-12 and sum(combo) > sum(best)):
            best, best_f1 = list(combo), f1
    return best


def file_sha256(p):
    h = hashlib.sha256()
    h.update(Path(p).read_bytes())
    return h.hexdigest()


def git_describe(enabled):
    if not enabled:
        return None
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def train(args):
    LM_SIGMA[0] = args.landmark_sigma
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    ds = Dataset(args.data)
    lab = ds.labels
    spacing = (lab["lateral_spacing_m"], lab["axial_spacing_m"])
    val_mask = ds.seeds >= args.val_from_seed
    train_idx = np.nonzero(~val_mask)[0]
    val_idx = np.nonzero(val_mask)[0]
    print(f"{len(train_idx)} training frames, {len(val_idx)} validation frames", flush=True)

    model = BoneNet(tuple(args.widths))
    if args.init:
        load_onnx_weights(model, args.init)
        freeze_bn(model)
        print(f"fine-tuning {args.init} (BatchNorm frozen)", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(train_idx) // args.batch
    budget_s = args.minutes * 60.0
    t0 = time.time()
    step = 0
    losses = []
    has_lm = np.array([len(ds.frames[i]["landmarks"]) > 0 for i in train_idx])
    pos_idx, neg_idx = train_idx[has_lm], train_idx[~has_lm]
    n_pos = int(round(args.batch * args.positive_share))
    # Frames with visible landmarks are drawn with weight (1 / n_c)^balance for the rarest class c
    # they show (n_c: frames of the training set showing class c): facets and transverse
    # processes are seen far less often than spinous tips.
    shows = np.zeros((len(pos_idx), len(CLASSES)), bool)
    for k, i in enumerate(pos_idx):
        for l in ds.frames[i]["landmarks"]:
            shows[k, l["class"]] = True
    per_class = shows.sum(0)
    print(f"training frames showing each class {dict(zip(CLASSES, per_class.tolist()))}", flush=True)
    inv = np.where(per_class > 0, 1.0 / np.maximum(per_class, 1), 0.0) ** args.class_balance
    pos_w = (shows * inv[None, :]).max(1)
    pos_w = pos_w / pos_w.sum()
    # Schedules run on wall time (the machine is shared, its speed varies): crops for the first
    # `crop_share` of the budget, whole frames after; lr warm-up, then cosine decay to 0.
    while True:
        frac = (time.time() - t0) / budget_s
        if frac >= 1.0:
            break
        # Frames showing landmarks are the minority: over-sample them.
        idx = np.concatenate([
            rng.choice(pos_idx, n_pos, replace=False, p=pos_w),
            rng.choice(neg_idx, args.batch - n_pos, replace=False),
        ])
        size = args.crop if frac < args.crop_share else H
        x, bt, ht, wt = batch(ds, idx, rng, size=size)
        bl, ll = model.logits(x)
        loss_b = bone_loss(bl, bt)
        loss_l = (focal_loss(ll, ht, wt) if args.landmark_loss == "focal"
                  else heatmap_bce(ll, ht, wt, args.landmark_pos_weight))
        loss = loss_b + loss_l
        warm = min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * frac))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((loss_b.item(), loss_l.item()))
        step += 1
        if step % 50 == 0:
            lb, lll = np.mean(losses[-50:], 0)
            print(f"step {step} bone {lb:.4f} landmarks {lll:.4f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s", flush=True)
    epoch = round(step * args.batch / max(len(train_idx), 1), 2)
    elapsed = time.time() - t0
    print(f"trained {step} steps ({epoch} epochs of frames) in {elapsed / 60:.1f} min", flush=True)

    val = evaluate(model, ds, val_idx, spacing) if len(val_idx) else {}
    for th, r in val.items():
        print(f"validation threshold {th}: {r}", flush=True)
    best_th = max(val, key=lambda t: val[t]["f1"]) if val else 0.3
    class_th = choose_class_thresholds(val) if val else [best_th] * len(CLASSES)
    print(f"validation: one threshold {best_th} F1 {val[best_th]['f1']:.3f}; per class "
          f"{class_th} F1 {class_f1(val, class_th):.3f}" if val else "no validation frames",
          flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        torch.save(model.state_dict(), args.checkpoint)
    export(model, out)
    # The exported graph must give the model's outputs (checked with ONNX Runtime).
    import onnxruntime as ort

    x, _, _, _ = batch(ds, val_idx[:4] if len(val_idx) else train_idx[:4], None, aug=False)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model.eval()
    with torch.no_grad():
        for xi in x:
            b, l = model(xi[None])
            ob, ol = sess.run(None, {"image": xi[None].numpy()})
            assert np.abs(ob - b.numpy()).max() < 1e-4 and np.abs(ol - l.numpy()).max() < 1e-4

    sidecar = {
        "model": out.name,
        "format": "telecho-bone-net/1",
        "input": {
            "name": "image",
            "shape": [1, 1, H, W],
            "dtype": "float32",
            "scale": 1.0 / 255.0,
            "offset": 0.0,
            "meaning": "B-mode grey level * scale + offset; row 0 at the probe face",
        },
        "outputs": {
            "bone": {"shape": [1, 1, OH, OW], "meaning": "bone-surface probability"},
            "landmarks": {"shape": [1, len(CLASSES), OH, OW], "meaning": "landmark heatmaps"},
        },
        "output_stride": STRIDE,
        "output_pixel_centre": "output (i, j) stands for input (row, col) = (2 i + 0.5, 2 j + 0.5)",
        "classes": CLASSES,
        "decode": {"landmark_threshold": best_th, "landmark_thresholds": class_th,
                   "bone_threshold": 0.5, "nms_radius_px": 3},
        "architecture": {"name": "BoneNet", "widths": list(args.widths),
                         "parameters": sum(p.numel() for p in model.parameters())},
        "training": {
            "dataset_command": lab.get("command"),
            "seeds": lab["seeds"],
            "frames_per_seed": lab["frames_per_seed"],
            "frames": int(len(train_idx)),
            "validation_seeds": [int(args.val_from_seed), int(lab["seeds"][1])],
            "validation_frames": int(len(val_idx)),
            "steps": step,
            "epochs": epoch,
            "batch": args.batch,
            "positive_share": args.positive_share,
            "class_balance": args.class_balance,
            "landmark_thresholds": class_th,
            "landmark_loss": args.landmark_loss,
            "landmark_pos_weight": args.landmark_pos_weight,
            "landmark_sigma_px": args.landmark_sigma,
            "crop": [args.crop, args.crop_share],
            "lr": args.lr,
            "minutes": round(elapsed / 60, 1),
            "torch": torch.__version__,
            "seed": args.seed,
            "init": Path(args.init).name if args.init else None,
            "augmentation": "gain x U(0.8,1.2) + U(-25,25) grey levels; speckle x Gamma(8, 1/8) "
                            "and Gaussian noise sigma U(0,8) (p 0.7); lateral flip (p 0.5); "
                            "depth shift U{-12..12} rows",
            "validation": {str(k): v for k, v in val.items()},
        },
        "dataset_code": {
            "git_describe": git_describe(not args.no_git),
            "sha256": {p: file_sha256(ROOT / p) for p in DATASET_CODE if (ROOT / p).exists()},
        },
    }
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB) and {out.with_suffix('.json')}")


class OnnxModel:
    """An exported model behind the interface `evaluate` uses (ONNX Runtime, one frame a run)."""

    def __init__(self, path):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def eval(self):
        pass

    def train(self):
        pass

    def __call__(self, x):
        outs = [self.sess.run(None, {"image": xi[None].numpy()}) for xi in x]
        return (torch.from_numpy(np.concatenate([o[0] for o in outs])),
                torch.from_numpy(np.concatenate([o[1] for o in outs])))


def thresholds(args):
    """Choose per-class landmark thresholds for an exported model on a dataset's validation
    seeds (never trained on) and write them into its sidecar (`decode.landmark_thresholds`)."""
    ds = Dataset(args.data)
    lab = ds.labels
    val_idx = np.nonzero(ds.seeds >= args.val_from_seed)[0]
    if not len(val_idx):
        sys.exit(f"no frames of seeds >= {args.val_from_seed} in {args.data}")
    spacing = (lab["lateral_spacing_m"], lab["axial_spacing_m"])
    val = evaluate(OnnxModel(args.model), ds, val_idx, spacing)
    for th, r in val.items():
        print(f"threshold {th}: F1 {r['f1']:.3f} per class [tp, fp, fn] {r['counts']}", flush=True)
    best_th = max(val, key=lambda t: val[t]["f1"])
    class_th = choose_class_thresholds(val)
    f1 = class_f1(val, class_th)
    print(f"one threshold {best_th}: F1 {val[best_th]['f1']:.3f}; per class {class_th}: F1 {f1:.3f}")
    side = Path(args.model).with_suffix(".json")
    sidecar = json.loads(side.read_text())
    sidecar["decode"]["landmark_thresholds"] = class_th
    sidecar["threshold_choice"] = {
        "command": " ".join(["models/train_bone_net.py"] + sys.argv[1:]),
        "dataset_command": lab.get("command"),
        "validation_seeds": [int(args.val_from_seed), int(lab["seeds"][1])],
        "validation_frames": int(len(val_idx)),
        "landmark_thresholds": class_th,
        "f1_per_class_thresholds": f1,
        "f1_one_threshold": [best_th, val[best_th]["f1"]],
        "validation": {str(k): v for k, v in val.items()},
        "dataset_code_sha256": {p: file_sha256(ROOT / p) for p in DATASET_CODE if (ROOT / p).exists()},
    }
    side.write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"wrote {side}")


def export_untrained(args):
    torch.manual_seed(0)
    m = BoneNet(tuple(args.widths))
    export(m, args.out)
    print(f"wrote {args.out}: {sum(p.numel() for p in m.parameters())} parameters")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train on a dataset folder and export ONNX + sidecar JSON")
    t.add_argument("--data", required=True, help="folder written by `telecho perception dataset`")
    t.add_argument("--out", default=str(ROOT / "models" / "bone_net.onnx"))
    t.add_argument("--minutes", type=float, default=25.0, help="training time budget")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--widths", type=int, nargs=4, default=[16, 32, 48, 64])
    t.add_argument("--landmark-loss", choices=["bce", "focal"], default="bce")
    t.add_argument("--landmark-pos-weight", type=float, default=100.0,
                   help="heatmap BCE weight 1 + this x target (bce loss)")
    t.add_argument("--landmark-sigma", type=float, default=1.5, help="heatmap Gaussian, output px")
    t.add_argument("--positive-share", type=float, default=0.6,
                   help="share of each batch drawn from frames with visible landmarks")
    t.add_argument("--class-balance", type=float, default=0.5,
                   help="positive frames drawn with weight (1/frames of their rarest class)^this "
                        "(0 = uniform)")
    t.add_argument("--crop", type=int, default=192, help="square training crops (multiple of 32)")
    t.add_argument("--crop-share", type=float, default=0.5,
                   help="share of the steps trained on crops; the rest on whole frames")
    t.add_argument("--val-from-seed", type=int, default=3800,
                   help="frames of seeds >= this are held out for validation and threshold choice")
    t.add_argument("--checkpoint", help="also save the PyTorch state dict here")
    t.add_argument("--init", help="start from this exported bone_net.onnx (fine-tuning, "
                   "BatchNorm frozen) instead of random weights")
    t.add_argument("--no-git", action="store_true", help="do not run `git describe` for the sidecar")
    th = sub.add_parser("thresholds", help="choose per-class landmark thresholds of an exported "
                        "model on a dataset's validation seeds; rewrites its sidecar")
    th.add_argument("--data", required=True, help="folder written by `telecho perception dataset`")
    th.add_argument("--model", default=str(ROOT / "models" / "bone_net.onnx"))
    th.add_argument("--val-from-seed", type=int, default=3800,
                    help="frames of seeds >= this are the validation frames (never trained on)")
    e = sub.add_parser("export-untrained", help="export a randomly initialised network (timing)")
    e.add_argument("--out", required=True)
    e.add_argument("--widths", type=int, nargs=4, default=[16, 32, 48, 64])
    args = ap.parse_args()
    {"train": train, "thresholds": thresholds, "export-untrained": export_untrained}[args.cmd](args)


if __name__ == "__main__":
    main()
