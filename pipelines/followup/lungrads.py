"""Lung-RADS v2022 category of a CT exam from its nodules (ACR Lung-RADS v2022, released November 2022).

A suggestion for a screening exam, never a diagnosis: the category is computed from the AI's nodules only,
so what the AI cannot see (a category 4X feature, an airway nodule, a cyst, a significant "S" finding) is
outside it, and the rule that fired is returned with the category so a reader can check it.

Sizes are the mean diameter (long + short axis) / 2, rounded to one decimal as the ACR asks. The rules
implemented (the table of v2022, solid / part-solid / non-solid rows):

- 1: no lung nodules, or nodules with benign calcification.
- 2: solid < 6 mm at baseline, or new < 4 mm; part-solid < 6 mm total at baseline; non-solid < 30 mm;
  non-solid >= 30 mm unchanged or slowly growing; a category 3 or 4 nodule unchanged for >= 3 months.
- 3: solid 6 to < 8 mm at baseline, or new 4 to < 6 mm; part-solid >= 6 mm total with a solid component
  < 6 mm, or new part-solid < 6 mm total; non-solid >= 30 mm at baseline or new.
- 4A: solid 8 to < 15 mm at baseline, or growing < 8 mm, or new 6 to < 8 mm; part-solid >= 6 mm total with a
  solid component 6 to < 8 mm, or a new or growing solid component < 4 mm.
- 4B: solid >= 15 mm at baseline, or new or growing >= 8 mm; part-solid with a solid component >= 8 mm, or a
  new or growing solid component >= 4 mm.
- 0: prior CT being located for comparison (the node says so when a prior exists but could not be read).

"Growing" is v2022's definition: mean diameter up by more than 1.5 mm within 12 months. The exam takes the
category of its most suspicious nodule. What the shipped model cannot give is stated in the rule: it gives
no solid-component size for a part-solid nodule, so the whole diameter stands in for it (the higher, safer
category).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipelines.base import NoduleCategory

VERSION = "Lung-RADS v2022"
# v2022: growth is an increase in mean diameter of more than 1.5 mm (within 12 months).
GROWTH_MM = 1.5


class Category(enum.StrEnum):
    INCOMPLETE = "0"
    NEGATIVE = "1"
    BENIGN = "2"
    PROBABLY_BENIGN = "3"
    SUSPICIOUS_4A = "4A"
    SUSPICIOUS_4B = "4B"


_ORDER = [Category.INCOMPLETE, Category.NEGATIVE, Category.BENIGN, Category.PROBABLY_BENIGN,
          Category.SUSPICIOUS_4A, Category.SUSPICIOUS_4B]  # fmt: skip


class Temporal(enum.StrEnum):
    """How a nodule stands against the prior: baseline (no prior exam), new, growing, stable (or smaller)."""

    BASELINE = "baseline"
    NEW = "new"
    GROWING = "growing"
    STABLE = "stable"


@dataclass(frozen=True)
class NoduleInput:
    """What Lung-RADS needs of one nodule."""

    mean_diameter_mm: float
    nodule_type: NoduleCategory | None  # None: unknown, treated as solid (the stricter size rows)
    temporal: Temporal
    label: str = ""  # e.g. "nodule 2", used in the rule text


@dataclass(frozen=True)
class Assessment:
    category: Category
    rule: str  # the rule that fired, in words
    suggestion: bool = True  # always: the AI's category is a suggestion for the reader

    def describe(self) -> str:
        return f"{VERSION} category {self.category.value} (suggestion): {self.rule}"


def mean_diameter(long_axis_mm: float, short_axis_mm: float) -> float:
    """Lung-RADS size: the mean of long and short axis, rounded to one decimal."""
    return round((long_axis_mm + short_axis_mm) / 2.0, 1)


def _solid(d: float, t: Temporal) -> tuple[Category, str]:
    if t is Temporal.STABLE:
        if d < 6:
            return Category.BENIGN, f"solid {d} mm < 6 mm, stable"
        return Category.BENIGN, f"solid {d} mm unchanged since the prior (category 3/4 stable >= 3 months)"
    if t is Temporal.GROWING:
        if d < 8:
            return Category.SUSPICIOUS_4A, f"solid {d} mm growing (> {GROWTH_MM} mm), < 8 mm"
        return Category.SUSPICIOUS_4B, f"solid {d} mm growing (> {GROWTH_MM} mm), >= 8 mm"
    if t is Temporal.NEW:
        if d < 4:
            return Category.BENIGN, f"new solid {d} mm < 4 mm"
        if d < 6:
            return Category.PROBABLY_BENIGN, f"new solid {d} mm, 4 to < 6 mm"
        if d < 8:
            return Category.SUSPICIOUS_4A, f"new solid {d} mm, 6 to < 8 mm"
        return Category.SUSPICIOUS_4B, f"new solid {d} mm >= 8 mm"
    if d < 6:
        return Category.BENIGN, f"solid {d} mm < 6 mm at baseline"
    if d < 8:
        return Category.PROBABLY_BENIGN, f"solid {d} mm, 6 to < 8 mm at baseline"
    if d < 15:
        return Category.SUSPICIOUS_4A, f"solid {d} mm, 8 to < 15 mm at baseline"
    return Category.SUSPICIOUS_4B, f"solid {d} mm >= 15 mm at baseline"


def _part_solid(d: float, t: Temporal) -> tuple[Category, str]:
    # The model gives no solid-component size: the whole diameter stands in for it (stated in the rule).
    solid = d
    note = " (solid component not measured: whole diameter used)"
    if t is Temporal.STABLE:
        return Category.BENIGN, f"part-solid {d} mm unchanged since the prior"
    if t in (Temporal.NEW, Temporal.GROWING):
        if t is Temporal.NEW and d < 6:
            return Category.PROBABLY_BENIGN, f"new part-solid {d} mm < 6 mm total"
        if solid < 4:
            return Category.SUSPICIOUS_4A, f"{t.value} part-solid, solid component {solid} mm < 4 mm{note}"
        return Category.SUSPICIOUS_4B, f"{t.value} part-solid, solid component {solid} mm >= 4 mm{note}"
    if d < 6:
        return Category.BENIGN, f"part-solid {d} mm < 6 mm total at baseline"
    if solid < 6:
        return Category.PROBABLY_BENIGN, f"part-solid {d} mm, solid component < 6 mm{note}"
    if solid < 8:
        return Category.SUSPICIOUS_4A, f"part-solid {d} mm, solid component 6 to < 8 mm{note}"
    return Category.SUSPICIOUS_4B, f"part-solid {d} mm, solid component >= 8 mm{note}"


def _non_solid(d: float, t: Temporal) -> tuple[Category, str]:
    if d < 30:
        return Category.BENIGN, f"non-solid {d} mm < 30 mm"
    if t in (Temporal.BASELINE, Temporal.NEW):
        return Category.PROBABLY_BENIGN, f"non-solid {d} mm >= 30 mm, {t.value}"
    return Category.BENIGN, f"non-solid {d} mm >= 30 mm, unchanged or slowly growing"


def nodule_category(nodule: NoduleInput) -> tuple[Category, str]:
    d, t = nodule.mean_diameter_mm, nodule.temporal
    if nodule.nodule_type is NoduleCategory.CALCIFIED:
        return Category.NEGATIVE, "benign (calcified) nodule"
    if nodule.nodule_type is NoduleCategory.PART_SOLID:
        return _part_solid(d, t)
    if nodule.nodule_type is NoduleCategory.GROUND_GLASS:
        return _non_solid(d, t)
    category, rule = _solid(d, t)
    if nodule.nodule_type is None:
        rule += " (nodule type unknown: solid rows used)"
    return category, rule


def assess(nodules: list[NoduleInput], *, prior_unavailable: bool = False) -> Assessment:
    """The exam's category: that of its most suspicious nodule, with the rule that fired."""
    if prior_unavailable:
        return Assessment(Category.INCOMPLETE, "a prior CT exists but could not be retrieved for comparison")
    if not nodules:
        return Assessment(Category.NEGATIVE, "no lung nodules found")
    graded = [(nodule_category(n), n) for n in nodules]
    (category, rule), worst = max(graded, key=lambda g: _ORDER.index(g[0][0]))
    label = f"{worst.label}: " if worst.label else ""
    return Assessment(category, label + rule)
