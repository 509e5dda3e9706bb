"""Brock University (PanCan) malignancy risk of a lung nodule: the full logistic model with spiculation.

McWilliams A. et al., "Probability of Cancer in Pulmonary Nodules Detected on First Screening CT",
N Engl J Med 2013;369:910-919. The coefficients are those of the full multivariable model with spiculation
("model 2b", Table 3 of the paper; the same numbers as the Supplementary Appendix and the published
calculators):

    log odds = 0.0287 (age - 62)
             + 0.6011 [female]
             + 0.2961 [family history of lung cancer]
             + 0.2953 [emphysema]
             - 5.3854 ((size / 10) ** -0.5 - 1.58113883)      size: nodule diameter in mm
             - 0.1276 [non-solid / ground-glass]  + 0.3770 [part-solid]   (solid: 0)
             + 0.6581 [upper lobe]
             - 0.0824 (nodule count - 4)
             + 0.7729 [spiculation]
             - 6.7892
    risk = 1 / (1 + exp(-log odds))

What the node can know: age and sex from the DICOM header, the size, type, lobe and count from the findings,
emphysema from the lung HU histogram (``pipelines.followup.emphysema``). What it cannot: the family history,
and spiculation (the shipped model does not rate it). An input the node does not know is never guessed: it is
named in ``unknown`` and the risk is given as the range over its possible values (``low``..``high``), with the
point estimate ``risk`` taken at the value the paper's population had most often (absent) and said so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from pipelines.base import NoduleCategory

CITATION = "McWilliams et al., N Engl J Med 2013;369:910-9, full model with spiculation (model 2b, Table 3)"

# The model's coefficients (see the module docstring).
AGE = 0.0287
AGE_CENTRE = 62.0
FEMALE = 0.6011
FAMILY_HISTORY = 0.2961
EMPHYSEMA = 0.2953
SIZE = -5.3854
SIZE_CENTRE = 1.58113883  # (10 / 4) ** 0.5: the transform of a 4 mm nodule
NON_SOLID = -0.1276
PART_SOLID = 0.3770
UPPER_LOBE = 0.6581
COUNT = -0.0824
COUNT_CENTRE = 4.0
SPICULATION = 0.7729
CONSTANT = -6.7892

# The binary inputs that may be unknown, in the order they are reported.
BINARY_INPUTS = ("female", "family_history", "emphysema", "upper_lobe", "spiculation")


@dataclass(frozen=True)
class BrockInputs:
    """One nodule's inputs; None means "not known" (never silently replaced by a default)."""

    diameter_mm: float
    nodule_type: NoduleCategory | None
    nodule_count: int
    age_years: float | None
    female: bool | None
    emphysema: bool | None
    upper_lobe: bool | None
    family_history: bool | None = None  # not in a DICOM header: unknown unless a site supplies it
    spiculation: bool | None = None  # the shipped image model does not rate spiculation


@dataclass(frozen=True)
class BrockRisk:
    """The risk (0..1) at the stated assumptions, its range over the unknown inputs, and what was unknown."""

    risk: float | None  # None when it cannot be computed at all (no age, no size)
    low: float | None
    high: float | None
    unknown: tuple[str, ...]
    assumptions: tuple[str, ...] = field(default=())
    reason: str = ""  # why no risk, when risk is None

    def describe(self) -> str:
        if self.risk is None:
            return f"Brock (PanCan) risk not computed: {self.reason}"
        text = f"Brock (PanCan) risk {100 * self.risk:.1f}%"
        if self.unknown:
            assert self.low is not None and self.high is not None  # set together with risk
            text += (
                f" (range {100 * self.low:.1f}-{100 * self.high:.1f}% over unknown inputs: "
                f"{', '.join(self.unknown)}; point estimate assumes {', '.join(self.assumptions)})"
            )
        return text


def log_odds(
    *,
    diameter_mm: float,
    nodule_type: NoduleCategory,
    nodule_count: int,
    age_years: float,
    female: bool,
    family_history: bool,
    emphysema: bool,
    upper_lobe: bool,
    spiculation: bool,
) -> float:
    """The model's linear predictor with every input known."""
    if diameter_mm <= 0:
        raise ValueError(f"nodule diameter must be positive, got {diameter_mm}")
    if nodule_count < 1:
        raise ValueError(f"nodule count must be at least 1, got {nodule_count}")
    type_term = {
        NoduleCategory.SOLID: 0.0,
        NoduleCategory.CALCIFIED: 0.0,  # never reached through brock_risk (calcified nodules are benign)
        NoduleCategory.GROUND_GLASS: NON_SOLID,
        NoduleCategory.PART_SOLID: PART_SOLID,
    }[nodule_type]
    return float(
        AGE * (age_years - AGE_CENTRE)
        + FEMALE * female
        + FAMILY_HISTORY * family_history
        + EMPHYSEMA * emphysema
        + SIZE * ((diameter_mm / 10.0) ** -0.5 - SIZE_CENTRE)
        + type_term
        + UPPER_LOBE * upper_lobe
        + COUNT * (nodule_count - COUNT_CENTRE)
        + SPICULATION * spiculation
        + CONSTANT
    )


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def brock_risk(inputs: BrockInputs) -> BrockRisk:
    """The risk of one nodule; unknown binary inputs widen the range, an unknown age or size gives no risk."""
    if inputs.age_years is None:
        return BrockRisk(None, None, None, ("age",), reason="patient age unknown (no PatientAge or birth date)")
    if inputs.nodule_type is NoduleCategory.CALCIFIED:
        return BrockRisk(None, None, None, (), reason="calcified nodule (benign pattern, outside the model)")
    unknown = [name for name in BINARY_INPUTS if getattr(inputs, name) is None]
    # An unknown nodule type: solid is the model's reference and the most frequent type in PanCan.
    types = [inputs.nodule_type] if inputs.nodule_type is not None else list(NoduleCategory)[:3]
    if inputs.nodule_type is None:
        unknown.append("nodule_type")
    known = {name: bool(getattr(inputs, name)) for name in BINARY_INPUTS if getattr(inputs, name) is not None}

    def risk_at(values: dict[str, bool], nodule_type: NoduleCategory) -> float:
        return _logistic(
            log_odds(
                diameter_mm=inputs.diameter_mm,
                nodule_type=nodule_type,
                nodule_count=inputs.nodule_count,
                age_years=inputs.age_years,  # type: ignore[arg-type]  # checked above
                **values,
            )
        )

    binary_unknown = [name for name in unknown if name in BINARY_INPUTS]
    all_risks = [
        risk_at({**known, **dict(zip(binary_unknown, combo, strict=True))}, nodule_type)
        for combo in itertools.product((False, True), repeat=len(binary_unknown))
        for nodule_type in types
    ]
    point = risk_at({**known, **dict.fromkeys(binary_unknown, False)}, types[0])
    assumptions = tuple(f"{name} absent" for name in binary_unknown)
    if inputs.nodule_type is None:
        assumptions += ("nodule_type solid",)
    return BrockRisk(point, min(all_risks), max(all_risks), tuple(unknown), assumptions)
