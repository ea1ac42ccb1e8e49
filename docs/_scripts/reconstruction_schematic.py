"""Draw the data path shared by advdetect's reconstruction detectors.

Run by ``docs/conf.py`` at build time (offline, well under a second); also
runnable alone: ``python docs/_scripts/reconstruction_schematic.py out.png``.
"""

import sys


def draw(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(9.0, 3.6))
    ax.set(xlim=(0, 100), ylim=(0, 40))
    ax.axis("off")

    def box(x, y, w, h, text, color, size=8.5, style="round,pad=0.4,rounding_size=1.2"):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, fc=color, ec="#333333",
                                    lw=0.9))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)

    def arrow(x0, y0, x1, y1, text="", dy=1.4, ls="-"):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=11,
                                     lw=1.0, color="#333333", linestyle=ls))
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + dy, text, ha="center", va="bottom",
                    fontsize=7.5, color="#333333")

    # The protected classifier, frozen: E (feature layers) then F (head).
    ax.add_patch(FancyBboxPatch((12, 22), 36, 14, boxstyle="round,pad=0.5,rounding_size=1.5",
                                fc="#f2f2f2", ec="#777777", lw=0.8, ls="--"))
    ax.text(30, 37.8, "protected classifier f (frozen; only DAFAR's joint mode trains it)", ha="center",
            fontsize=7.5, color="#555555")
    box(14, 25, 14, 8, "feature layers\nE / $f_{fm}$", "#dbe9f6")
    box(33, 25, 13, 8, "head F\n(logits)", "#dbe9f6")
    arrow(28.6, 29, 32.4, 29)
    box(1, 25, 7, 8, "input\n$x$", "#ffffff")
    arrow(8.6, 29, 13.4, 29)
    arrow(46.6, 29, 53, 29, "class", dy=1.0)
    ax.text(55, 29, "prediction\n$f(x)$", va="center", fontsize=8)

    # The hook on feature_layer feeds the reconstructor.
    arrow(21, 24.4, 21, 15.6, "", ls="-")
    ax.text(22, 17.2, "forward hook on\n`feature_layer`", fontsize=7, color="#333333")
    arrow(39.5, 24.4, 39.5, 15.6)
    ax.text(40.5, 17.2, "softmax$(f(x)/T)$\n(CMAG's LR)", fontsize=7, color="#333333")
    box(14, 6, 33, 9, "reconstructor, trained on clean images only\n"
        "CMAG: FMR, LR $\\rightarrow$ GR     DAFAR: feedback decoder D", "#e3f1df", size=8)
    arrow(47.6, 10.5, 55.4, 10.5, r"$\hat{x}$", dy=0.8)
    box(56, 5, 18, 11, "compare $\\hat{x}$ with $x$\nSSIM, $\\|x-\\hat{x}\\|_2$,\n"
        "anomaly score", "#fff2cc", size=8)
    arrow(5, 24.4, 5, 2.5, ls=":")
    ax.add_patch(FancyArrowPatch((5, 2.5), (64.5, 2.5), arrowstyle="-", lw=1.0,
                                 color="#333333", linestyle=":"))
    arrow(64.5, 2.5, 64.5, 4.4, ls=":")
    ax.text(30, 0.6, "the input itself", ha="center", fontsize=7, color="#333333")
    arrow(74.6, 10.5, 79.4, 10.5)
    box(80, 5, 18.5, 11, "threshold learned\non held-out clean data\n"
        "$+1$ clean / $-1$ adversarial", "#f8d7d7", size=7.8)

    ax.text(79.5, 33, "clean input: features as in training\n"
            "$\\rightarrow$ good reconstruction, small error\n\n"
            "adversarial input: features disturbed\n"
            "$\\rightarrow$ poor reconstruction, large error", fontsize=7.5, va="center",
            ha="center", bbox=dict(boxstyle="round,pad=0.5", fc="#ffffff", ec="#999999",
                                   lw=0.6))
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    draw(sys.argv[1] if len(sys.argv) > 1 else "reconstruction_schematic.png")
