"""How right are a model's pseudo-labels? Per-class precision and recall of its confident predictions
on the unlabelled pool, against the pool's true masks (a demo set made with --unlabeled-masks).

    python bench/pseudo_label_quality.py RUN_DIR DEMO_ROOT [--split unlabeled] [--limit 400] [--quick] [--tta d4]

RUN_DIR is a `selftune train` output folder (its best_model_ema.pt is used) or a model file. For each
threshold it prints the share of pixels accepted, their accuracy, and per class the precision and
recall of the accepted pixels; then, at the highest threshold, which true classes the confidently
predicted pixels hold (rows: predicted class, columns: true class). This is the measurement behind
the self-training diagnosis in docs/data.md: a class whose confident pixels are often another class
is one self-training will drift on. `--tta flip|d4` scores the probabilities averaged over flipped views,
as the loop's `teacher_tta` makes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from selftune.trainable.config import TEACHER_TTAS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="run folder or model file")
    p.add_argument("data", type=Path, help="dataset root whose SPLIT has masks")
    p.add_argument("--split", default="unlabeled", help="split with images/ and masks/ (default: unlabeled)")
    p.add_argument("--limit", type=int, default=400, help="images to score (sorted order)")
    p.add_argument("--thresholds", default="0,0.8,0.9,0.95", help="comma-separated")
    p.add_argument("--quick", action="store_true", help="score 100 images only")
    p.add_argument("--tta", default="none", choices=TEACHER_TTAS, help="the teacher_tta of the loop")
    args = p.parse_args(argv)
    if args.quick:
        args.limit = min(args.limit, 100)

    import numpy as np
    import torch

    from selftune.data import read_classes, read_image, read_mask
    from selftune.trainable.augment import normalize
    from selftune.trainable.checkpoint import load_model_file
    from selftune.trainable.functional import confusion_matrix, tta_probs
    from selftune.trainable.model import build_model

    cfg, _, weights, info = load_model_file(args.model)
    classes = read_classes(args.data)
    k = classes.num_classes
    model = build_model(cfg, k)
    model.load_state_dict(weights)
    model.eval()
    base = args.data / args.split
    images = sorted(q for q in (base / "images").rglob("*") if q.is_file() and not q.name.startswith("."))
    images = images[: args.limit]
    probs, truth = [], []
    for i in range(0, len(images), 50):
        chunk = images[i : i + 50]
        x = torch.from_numpy(np.stack([read_image(q) for q in chunk])).permute(0, 3, 1, 2)
        masks = [read_mask((base / "masks" / q.relative_to(base / "images")).with_suffix(".png"), classes)
                 for q in chunk]
        with torch.no_grad():
            probs.append(tta_probs(model, normalize(x), args.tta))
        truth.append(torch.from_numpy(np.stack(masks)))
    conf, pred = torch.cat(probs).max(1)
    y = torch.cat(truth)
    short = [n[:10] for n in classes.names]
    print(f"model {info['file']} (iteration {info['iteration']}), {len(images)} images of {base}, tta {args.tta}")
    print(f"{'threshold':>9} {'accepted':>8} {'accuracy':>8}  " + "  ".join(f"{n:>13}" for n in short))
    print(f"{'':>9} {'':>8} {'':>8}  " + "  ".join(f"{'prec / rec':>13}" for _ in short))
    thresholds = [float(t) for t in args.thresholds.split(",")]
    truth_total = confusion_matrix(pred, y, k).sum(1).double()  # pixels of each true class
    cms = {}
    for thr in thresholds:
        acc = conf >= thr
        cm = cms[thr] = confusion_matrix(pred[acc], y[acc], k).double()  # rows true, columns predicted
        predicted = cm.sum(0)
        cells = [f"{cm[c, c] / predicted[c]:>6.2f}" if predicted[c] else "    - " for c in range(k)]
        cells = [f"{p} / {cm[c, c] / truth_total[c].clamp(min=1):.2f}" for c, p in enumerate(cells)]
        right = (cm.trace() / cm.sum()).item() if cm.sum() else float("nan")
        print(f"{thr:>9.2f} {acc.float().mean().item():>8.2f} {right:>8.3f}  " + "  ".join(f"{c:>13}" for c in cells))
    top = max(thresholds)
    mix = cms[top].T  # rows predicted, columns true
    print(f"\nconfident (>= {top}) pixels: rows predicted class, columns true class, row shares")
    print(f"{'':>12}" + "".join(f"{n:>11}" for n in short))
    for c in range(k):
        print(f"{short[c]:>12}" + "".join(f"{v:>11.2f}" for v in (mix[c] / mix[c].sum().clamp(min=1)).tolist()))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
