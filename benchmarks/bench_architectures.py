"""Cost of CMAG and DAFAR on a ResNet-18 at 3 x 224 x 224: parameters, fit time, peak memory.

Issue 15 measured, on a ResNet-18 (ImageNet stem, 100 classes) at 3 x 224 x 224,
51 M parameters in CMAG's feature-map reconstructor and 309 M in DAFAR's dense
fallback (7.8 GB resident for 32 images), because both began with a dense
projection from the features to a quarter-resolution image. This script fits
each detector with its defaults for one epoch on 32 images (random pixels: the
victim is untrained, since the cost does not depend on the weights) and
reports, per detector, the layer read, every network the detector owns and its
parameter count, the fit time, the time to score the 32 images and the peak
resident memory of the process (``VmHWM``). Each detector runs in a fresh
process, so each peak is its own. The "dense design" column gives what the
dense projection of the previous design would hold at these shapes
(:func:`advdetect.nn.reconstructors.dense_projection_weights`; not built).

    python benchmarks/bench_architectures.py [--image-size 224] [--n-images 32]
        [--width 64] [--n-classes 100] [--batch-size 128] [--report report.md]
        [--runs cmag dafar dafar-conv] [--output docs/benchmarks/architectures]

With the default ``--batch-size`` (the detectors' own, 128), 32 images are one
batch that inference pads to 128 (``advdetect.base.batched`` pads every short
batch to ``batch_size`` so that scores do not depend on the batch); pass
``--batch-size 32`` to measure without the padding.
"""

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import settings_block, write  # noqa: E402

CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np, torch
import advdetect
from advdetect.models import ResNet18
from advdetect.nn.reconstructors import dense_projection_weights

name, size, n, width, n_classes, params = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
batch_size = int(sys.argv[7])
torch.manual_seed(0)
victim = ResNet18(n_classes=n_classes, width=width).eval()
X = np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)
det = getattr(advdetect, name)(victim, device="cpu", random_state=0, max_epochs=1, **params)
if batch_size:
    det.set_params(batch_size=batch_size)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    det.fit(X)
    fit_s = time.perf_counter() - t0
t0 = time.perf_counter()
scores = det.score_samples(X)
score_s = time.perf_counter() - t0

def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

count = lambda m: sum(p.numel() for k, p in m.named_parameters() if not k.startswith("classifier"))
nets = {k: (type(v).__name__, count(v)) for k, v in vars(det).items()
        if isinstance(v, torch.nn.Module)
        and k not in ("classifier", "classifier_", "feedback_autoencoder_")}
print(json.dumps(dict(
    detector=name, params=params, feature_layer=det.feature_layer_,
    feature_shape=list(det.feature_shape_), networks=nets,
    classifier_params=count(victim), decoder_kind=getattr(det, "decoder_kind_", None),
    dense_design=dense_projection_weights(int(np.prod(det.feature_shape_)), X.shape[1:]),
    fit_s=fit_s, score_s=score_s, peak_rss_mb=status("VmHWM") / 2**20,
    maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    finite=bool(np.isfinite(scores).all()),
    warnings=[str(w.message)[:300] for w in caught if issubclass(w.category, UserWarning)])))
"""

RUNS = {"cmag": ("CMAGDetector", {}),
        "dafar": ("DAFARDetector", {"anomaly_max_epochs": 1}),
        # The fallback for a layer that cannot be mirrored, chosen explicitly.
        "dafar-conv": ("DAFARDetector", {"anomaly_max_epochs": 1, "decoder": "conv"})}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--width", type=int, default=64, help="ResNet-18 width (torchvision: 64)")
    p.add_argument("--n-classes", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=0,
                   help="detectors' batch_size (0: their default, 128)")
    p.add_argument("--report", default="report.md", help="file name of the report")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--output", default=None, help="folder for the report")
    args = p.parse_args(argv)
    settings = dict(vars(args), victim="advdetect.models.ResNet18 (ImageNet stem, untrained)",
                    fit="defaults, max_epochs=1 (DAFAR: anomaly_max_epochs=1), device=cpu",
                    runs=[f"{n} {kw}" for n, kw in (RUNS[r] for r in args.runs)],
                    torch=torch.__version__,
                    threads=torch.get_num_threads(), python=sys.version.split()[0],
                    load_average=os.getloadavg()[0],
                    command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
    print("settings: " + json.dumps(settings), flush=True)
    rows = []
    for name, kw in (RUNS[r] for r in args.runs):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, name, str(args.image_size), str(args.n_images),
             str(args.width), str(args.n_classes), json.dumps(kw), str(args.batch_size)],
            check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    lines = ["| detector | parameters | layer read (shape) | network: parameters | largest | "
             "dense design would hold | fit s | score s | peak RSS MB | finite |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nets = "; ".join(f"{k} ({t}): {c:,}" for k, (t, c) in r["networks"].items())
        largest = max(c for _, c in r["networks"].values())
        kind = f" -> {r['decoder_kind']}" if r["decoder_kind"] else ""
        lines.append(
            f"| {r['detector']}{kind} | {r['params'] or 'defaults'} | {r['feature_layer']} "
            f"{tuple(r['feature_shape'])} | {nets} | {largest:,} | {r['dense_design']:,} | "
            f"{r['fit_s']:.1f} | {r['score_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['finite']} |")
    table = "\n".join(lines)
    notes = [w for r in rows for w in r["warnings"]]
    print()
    print(table)
    text = (settings_block(settings) +
            f"## ResNet-18 at 3 x {args.image_size} x {args.image_size}, "
            f"{args.n_images} images, one epoch, batch_size "
            f"{args.batch_size or 'default (128)'}\n\n"
            f"Classifier: {rows[0]['classifier_params']:,} parameters (not owned by the "
            "detectors, not trained). Every network the detectors own is listed.\n\n"
            + table + "\n")
    if notes:
        text += "\nWarnings during fit:\n\n" + "\n".join(f"* {w}" for w in notes) + "\n"
    write(args.output, args.report, text)


if __name__ == "__main__":
    main()
