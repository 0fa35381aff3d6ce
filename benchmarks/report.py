"""Markdown table and figure from a benchmark JSON: ``python -m benchmarks.report results/NAME.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PAPER = {
    "source": "MDM paper, mean over 10 runs (papers/METHOD.md); full masks; pretrained on all images incl. test",
    "glas": {
        "shots": {"8": "10%", "85": "100%"},
        "methods": {
            "MDM": {"8": 91.60, "85": 91.95},
            "DDPM features": {"8": 90.30, "85": 90.45},
            "MAE": {"8": 88.56, "85": 89.71},
            "U-Net (supervised)": {"8": 53.46, "85": 85.93},
        },
    },
    "monuseg": {
        "shots": {"3": "10%", "30": "100%"},
        "methods": {
            "MDM": {"3": 79.71, "30": 81.01},
            "DDPM features": {"3": 74.37, "30": 80.31},
            "MAE": {"3": 76.19, "30": 73.68},
            "U-Net (supervised)": {"3": 54.79, "30": 74.56},
        },
    },
}


def _columns(summary: list[dict]) -> list[tuple]:
    return sorted({(r["dataset"], r["protocol"], r["shots"]) for r in summary})


def markdown(result: dict) -> str:
    """Dice (mean ± std over seeds, %) per method, with the paper's numbers beside ours."""
    summary = result["summary"]
    lines = [
        f"# Benchmark `{result['name']}`",
        "",
        f"Command: `{result['command']}`  ",
        f"Started {result['started']}, {result['wall_seconds'] / 60:.0f} min, peak RSS {result['peak_rss_mib']:.0f} MiB.",
        "",
    ]
    for scale in sorted({r["scale"] for r in summary}):
        rows = [r for r in summary if r["scale"] == scale]
        cols = _columns(rows)
        tests = {(r["dataset"]): r["test_images"] for r in rows}
        lines += [
            f"## Dice (%) at image scale {scale:g}, mean ± std over seeds",
            "",
            "| method | " + " | ".join(f"{d} {p} n={n}" for d, p, n in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for method in sorted({r["method"] for r in rows}):
            cells = []
            for d, p, n in cols:
                hit = [r for r in rows if (r["method"], r["dataset"], r["protocol"], r["shots"]) == (method, d, p, n)]
                cells.append(f"{hit[0]['mean']:.1f} ± {hit[0]['std']:.1f}" if hit else "")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        for method in PAPER["glas"]["methods"]:
            cells = [
                f"*{PAPER[d]['methods'][method].get(str(n), '')}*" if p == "full" and d in PAPER else ""
                for d, p, n in cols
            ]
            lines.append(f"| paper: {method} | " + " | ".join(c if c != "**" else "" for c in cells) + " |")
        fractions = {
            (d, p, n): next(r["label_fraction"] for r in rows if (r["dataset"], r["protocol"], r["shots"]) == (d, p, n))
            for d, p, n in cols
        }
        lines += [
            "| labelled pixels | " + " | ".join(f"{100 * fractions[c]:.3g}%" for c in cols) + " |",
            "",
            "Test images: "
            + ", ".join(f"{d} {n}" for d, n in tests.items())
            + "; seeds: "
            + str(rows[0]["seeds"])
            + ".",
            "",
        ]
    if result.get("speed"):
        lines += ["## Speed and memory (512 x 512 image, this CPU)", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in result["speed"].items()]
        lines.append(f"| peak RSS of the whole run (MiB) | {result['peak_rss_mib']} |")
        lines.append("")
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    """Dice against the number of labelled images, one panel per dataset, protocol and scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    summary = result["summary"]
    panels = sorted({(r["dataset"], r["protocol"], r["scale"]) for r in summary})
    plt.rcParams["axes.prop_cycle"] = plt.cycler(color=plt.get_cmap("tab20").colors)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (d, p, s) in zip(axes[0], panels, strict=False):
        rows = [r for r in summary if (r["dataset"], r["protocol"], r["scale"]) == (d, p, s)]
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["shots"], r["mean"], r["std"]) for r in rows if r["method"] == method)
            x, y, e = zip(*pts, strict=False)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=method)
        if p == "full" and d in PAPER:
            for method, values in PAPER[d]["methods"].items():
                if method in ("MDM", "U-Net (supervised)"):
                    xs = sorted(int(n) for n in values)
                    ax.plot(
                        xs,
                        [values[str(n)] for n in xs],
                        "k--" if method == "MDM" else "k:",
                        lw=1,
                        label=f"paper {method}",
                    )
        ax.set_xscale("log")
        shots = sorted({r["shots"] for r in rows})
        ax.set_xticks(shots, [str(n) for n in shots])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{d}, {p} labels, scale {s:g}")
        ax.set_xlabel("labelled training images")
        ax.set_ylabel("Dice (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_report(json_path: Path) -> None:
    """NAME.md and (when there are Dice results) NAME.png beside NAME.json."""
    result = json.loads(Path(json_path).read_text())
    Path(json_path).with_suffix(".md").write_text(markdown(result))
    if result["summary"]:
        figure(result, Path(json_path).with_suffix(".png"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json", type=Path, nargs="+")
    for path in parser.parse_args(argv).json:
        write_report(path)


if __name__ == "__main__":
    main()
