"""What the demo shows: the live table of answers per reviews version, and the split verdict."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from meshware.demo.traffic import Audience, Tally, split_matches

__all__ = ["split_line", "split_table"]

_COLORS = {"v1": "white", "v2": "blue", "v3": "red"}
_BAR = 20


def _versions(audience: Audience, tally: Tally) -> list[str]:
    seen = set(tally.of(audience)) | {v for v, w in audience.expected.items() if w}
    return sorted(seen, key=lambda v: (v.startswith("error"), v))


def split_table(audiences: Sequence[Audience], tally: Tally, planned: int) -> Table:
    """Requests per audience and reviews version so far, beside the weights applied."""
    table = Table(
        title=f"requests per reviews version: {tally.total()}/{planned}",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    for column, justify in (
        ("USERS", "left"),
        ("REVIEWS", "left"),
        ("REQUESTS", "right"),
        ("SHARE", "right"),
        ("WEIGHT", "right"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for audience in audiences:
        counts = tally.of(audience)
        n = sum(counts.values())
        for i, version in enumerate(_versions(audience, tally)):
            count = counts.get(version, 0)
            share = count / n if n else 0.0
            weight = audience.fraction(version)
            style = "bold red" if version.startswith("error") else _COLORS.get(version, "")
            table.add_row(
                audience.label if i == 0 else "",
                Text(version if version.startswith("error") else f"reviews-{version}", style),
                str(count),
                f"{100 * share:.1f}%",
                "" if version.startswith("error") else f"{100 * weight:.0f}%",
                Text("█" * round(_BAR * share), style),
            )
    return table


def split_line(audience: Audience, tally: Tally) -> tuple[str, bool]:
    """``split  everyone: v1 90.2% · v2 9.8%  (weights v1 90 · v2 10)`` and whether it matches."""
    counts = tally.of(audience)
    n = sum(counts.values()) or 1
    observed = " · ".join(
        f"{version} {100 * counts.get(version, 0) / n:.1f}%"
        for version in _versions(audience, tally)
    )
    weights = " · ".join(f"{v} {w}" for v, w in sorted(audience.expected.items()) if w)
    ok = split_matches(audience, counts)
    return f"split  {audience.label}: {observed}  (weights {weights})", ok
