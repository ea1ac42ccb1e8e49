"""Turn the benchmark's own output files into reST tables for the Benchmarks page.

``advdetect benchmark --output DIR`` writes ``results.csv`` (detector x attack:
``roc_auc``, ``detection_rate``, ``clean_fpr``, ``tpr_at_1_fpr``,
``tpr_at_5_fpr``, ``n_adversarial``, ``paper_detection_rate``, ...),
``attacks.csv``, ``timing.csv``, ``settings.json``, ``results.md`` and PNG
plots. A copy of that folder committed as ``docs/benchmarks/`` is rendered
here; a missing file gives a note on the page rather than a failed build.
Standard library only.
"""

import csv
import glob
import json
import math
import os

#: Columns of results.csv shown as detector x attack tables, with their titles.
PIVOTS = [
    ("roc_auc", "ROC-AUC (threshold-free; 0.5 is chance)"),
    ("detection_rate", "Detection rate at the detector's own threshold"),
    ("tpr_at_1_fpr", "Detection rate at 1 % clean false positives"),
    ("tpr_at_5_fpr", "Detection rate at 5 % clean false positives"),
]


def _escape(text):
    text = str(text)
    for ch in "\\*`|_":
        text = text.replace(ch, "\\" + ch)
    return text


def _fmt(value, digits=3):
    if value is None or value == "":
        return "–"
    try:
        number = float(value)
    except ValueError:
        return _escape(value)
    if math.isnan(number):
        return "–"
    if number.is_integer() and abs(number) >= 1 and "." not in str(value):
        return str(int(number))
    return f"{number:.{digits}f}"


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def list_table(header, rows, title=None):
    """A ``list-table`` directive (lines) from a header and rows of strings."""
    lines = [f".. list-table:: {title}" if title else ".. list-table::", "   :header-rows: 1",
             ""]
    for row in [header] + rows:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return lines + [""]


def _unique(values):
    return list(dict.fromkeys(values))


def pivot(rows, column, extra=None):
    """Detector rows x attack columns of ``column``; ``extra`` adds one per-detector column."""
    detectors = _unique(r["detector"] for r in rows)
    attacks = _unique(r["attack"] for r in rows)
    cell = {(r["detector"], r["attack"]): r.get(column) for r in rows}
    header = ["detector"] + [_escape(a) for a in attacks]
    if extra:
        header.append(extra[1])
    body = []
    for d in detectors:
        line = [_escape(d)] + [_fmt(cell.get((d, a))) for a in attacks]
        if extra:
            first = next(r for r in rows if r["detector"] == d)
            line.append(_fmt(first.get(extra[0])))
        body.append(line)
    return header, body


def render(folder, rel):
    """reST for the benchmark results in ``folder`` (``rel``: its path from the page)."""
    results = os.path.join(folder, "results.csv")
    markdown = os.path.join(folder, "results.md")
    out = []
    if not os.path.exists(results):
        if os.path.exists(markdown):
            out += [".. note::", "",
                    "   Only the benchmark's Markdown report is committed; it is shown as "
                    "written.", "",
                    f".. literalinclude:: {rel}/results.md", "   :language: text", ""]
            return "\n".join(out)
        return "\n".join([
            ".. note::", "",
            "   No benchmark results are committed yet (``docs/benchmarks/results.csv`` "
            "is missing). Run the benchmark (see above) and copy its output folder to "
            "``docs/benchmarks/``; the next docs build renders it here.", ""])

    rows = _read_csv(results)
    settings_path = os.path.join(folder, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path, encoding="utf-8") as fh:
            s = json.load(fh)
        facts = [
            ("data set", s.get("dataset")),
            ("clean training images", s.get("n_train_actual", s.get("n_train"))),
            ("clean test images", s.get("n_test_actual", s.get("n_test"))),
            ("images attacked per attack", s.get("n_attack")),
            ("victim test accuracy", _fmt(s.get("victim_accuracy"))),
            ("victim epochs", s.get("victim_epochs")),
            ("detector epochs", s.get("detector_epochs") or "each detector's default"),
            ("seed", s.get("seed")),
            ("torch / threads / device", f"{s.get('torch')} / {s.get('threads')} / "
                                         f"{s.get('device')}"),
            ("wall time", f"{float(s['wall_seconds']):.0f} s" if s.get("wall_seconds")
             else None),
        ]
        out += ["Settings of the committed run", "~" * 29, ""]
        out += [f":{name}: {_escape(value)}" for name, value in facts if value is not None]
        out += [""]

    attacks_path = os.path.join(folder, "attacks.csv")
    if os.path.exists(attacks_path):
        arows = _read_csv(attacks_path)
        cols = [c for c in ("attack", "attacked", "success_rate", "n_adversarial", "mean_l2",
                            "mean_linf", "seconds") if arows and c in arows[0]]
        out += ["Attacks", "~" * 7, "",
                "Only successful adversarial examples (re-checked: prediction changed, image "
                "valid) enter the detection tables.", ""]
        out += list_table([_escape(c) for c in cols],
                          [[_fmt(r[c]) if c != "attack" else _escape(r[c]) for c in cols]
                           for r in arows])

    for column, title in PIVOTS:
        if not rows or column not in rows[0]:
            continue
        extra = ("clean_fpr", "clean FPR") if column == "detection_rate" else None
        header, body = pivot(rows, column, extra)
        out += [title, "~" * len(title), ""] + list_table(header, body)

    paper = [r for r in rows if _fmt(r.get("paper_detection_rate")) != "–"]
    if paper:
        title = "Beside the papers' own figures (detection rate)"
        out += [title, "~" * len(title), ""]
        out += list_table(["detector", "attack", "ours", "our clean FPR", "paper"],
                          [[_escape(r["detector"]), _escape(r["attack"]),
                            _fmt(r["detection_rate"]), _fmt(r["clean_fpr"]),
                            _fmt(r["paper_detection_rate"])] for r in paper])

    timing_path = os.path.join(folder, "timing.csv")
    if os.path.exists(timing_path):
        trows = _read_csv(timing_path)
        cols = [c for c in ("detector", "fit_seconds", "batch_size", "score_images_per_s",
                            "classifier_images_per_s", "cost_vs_classifier")
                if trows and c in trows[0]]
        out += ["Timing", "~" * 6, ""]
        out += list_table([_escape(c) for c in cols],
                          [[_fmt(r[c], 2) if c != "detector" else _escape(r[c]) for c in cols]
                           for r in trows])

    plots = sorted(glob.glob(os.path.join(folder, "roc_*.png")))
    if plots:
        out += ["ROC curves", "~" * 10, ""]
        for path in plots:
            name = os.path.basename(path)
            out += [f".. image:: {rel}/{name}", f"   :alt: ROC curves, {name[4:-4]}",
                    "   :width: 45%", ""]

    files = [f for f in ("results.md", "results.csv", "attacks.csv", "timing.csv",
                         "settings.json") if os.path.exists(os.path.join(folder, f))]
    out += ["The committed files: " + ", ".join(f":download:`{f} <{rel}/{f}>`" for f in files)
            + ".", ""]
    return "\n".join(out)


def write(srcdir, target, folder="benchmarks", page_dir="user_guide"):
    """Write ``target`` (reST to include) from ``srcdir/folder``; paths relative to ``page_dir``."""
    rel = os.path.relpath(os.path.join(srcdir, folder), os.path.join(srcdir, page_dir))
    text = render(os.path.join(srcdir, folder), rel.replace(os.sep, "/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
        with open(target, encoding="utf-8") as fh:
            if fh.read() == text:
                return target
    with open(target, "w", encoding="utf-8") as fh:
        fh.write(text)
    return target
