"""Shared figure helpers for MoESim's plots (tools/aggregate.py, experiments/*/plot.py,
experiments/scaling/report.py): provenance, plain tick labels, failed-point markers.

Every figure carries its provenance twice: in a footer line (git commit, date, sweep or study,
command) and in the PNG's text chunks (read them back with `python3 -c "from PIL import Image;
print(Image.open('f.png').text)"` or `identify -verbose f.png`):

    Software       MoESim <commit>          (commit of the checkout that drew the figure; -dirty
                                             when it had uncommitted changes)
    Creation Time  2026-11-30T06:59:00Z
    Source         the command that produced the figure
    Title          the figure's title
    MoESim-Commit, MoESim-Date, MoESim-Sweep, MoESim-Command, MoESim-Data-Commits
                                            the same, machine-readable; Data-Commits = the
                                            git_commit attributes of the result files plotted

    prov = plotting.provenance(sweep="capacity", command="experiments/capacity_sweep/plot.py DIR")
    plotting.plain_ticks(ax)                 # no offset / scientific tick labels
    plotting.mark_failed(ax, [x1, x2], color="C0")   # an x on the axis per failed point
    plotting.save(fig, "out.png", prov, title="...")   # footer + metadata + savefig
Needs matplotlib; nothing else beyond the standard library.
"""
import datetime
import os
import shlex
import subprocess
import sys

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def git_commit(repo=REPO):
    """Short commit of the checkout, '-dirty' when it has uncommitted changes; 'unknown' without git."""
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def provenance(sweep="", command=None, data_commits=()):
    """What produced a figure: commit, UTC date, sweep / study name, command line."""
    if command is None:
        command = " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0].startswith(REPO) else sys.argv[0]]
                           + [shlex.quote(a) for a in sys.argv[1:]])
    return {"commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sweep": sweep, "command": command,
            "data_commits": ",".join(sorted({c for c in data_commits if c}))}


def footer_text(prov):
    parts = [f"MoESim {prov['commit']}", prov["date"]]
    if prov.get("sweep"):
        parts.append(f"sweep '{prov['sweep']}'")
    if prov.get("data_commits") and prov["data_commits"] != prov["commit"]:
        parts.append(f"data from {prov['data_commits']}")
    parts.append(prov["command"])
    return "  |  ".join(parts)


def add_footer(fig, prov):
    fig.text(0.005, 0.003, footer_text(prov), fontsize=6, color="0.35", ha="left", va="bottom", wrap=True)


def metadata(prov, title=""):
    return {"Title": title, "Software": f"MoESim {prov['commit']}", "Creation Time": prov["date"],
            "Source": prov["command"], "MoESim-Commit": prov["commit"], "MoESim-Date": prov["date"],
            "MoESim-Sweep": prov.get("sweep", ""), "MoESim-Command": prov["command"],
            "MoESim-Data-Commits": prov.get("data_commits", "")}


def plain_ticks(ax):
    """Plain numeric tick labels: no offset ('+1e3') and no scientific multiplier, so a 1-token
    difference never looks like a trend. Axes that are not plain linear numbers are left alone."""
    for axis in ("x", "y"):
        try:
            ax.ticklabel_format(axis=axis, useOffset=False, style="plain")
        except AttributeError:  # log scale, categorical or fixed labels: no ScalarFormatter
            pass


def mark_failed(ax, xs, color="C3", label=None):
    """An 'x' on the x axis (below the data) at each x of a failed point; returns the artist."""
    if not len(xs):
        return None
    return ax.scatter(list(xs), [0.0] * len(xs), marker="x", s=40, color=color, clip_on=False, zorder=5,
                      transform=ax.get_xaxis_transform(), label=label)


def save(fig, path, prov, title="", dpi=None, extra=None, reserve_footer=True, **kwargs):
    """Plain tick labels on every axis, room for the footer (the plot area moves up by the
    footer's height), the footer, PNG metadata (plus `extra` text chunks, e.g.
    MoESim-Failed-Points), then savefig."""
    for ax in fig.axes:
        plain_ticks(ax)
    if reserve_footer:
        pad = 12.0 / (fig.get_figheight() * fig.dpi)  # ~12 px for a 6 pt line
        bottom = fig.subplotpars.bottom
        try:
            fig.subplots_adjust(bottom=min(bottom + pad, 0.5))
        except ValueError:
            pass
    add_footer(fig, prov)
    fig.savefig(path, dpi=dpi, metadata={**metadata(prov, title), **(extra or {})}, **kwargs)
