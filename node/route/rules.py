"""Routing rules: pydantic models for the ``routes:`` section and their evaluation, with explanations.

YAML shape (embedded in the node's config)::

    routes:
      - name: chest-ct-thin
        when:
          all:
            - {tag: Modality, equals: CT}
            - {tag: BodyPartExamined, one_of: [CHEST, LUNG, THORAX], ignore_case: true}
            - {tag: SliceThickness, range: {max: 2.5}}
            - {tag: SeriesDescription, regex: "lung|chest", ignore_case: true}
            - not: {tag: ImageType, equals: LOCALIZER}
            - calling_ae: {one_of: [ORTHANC, CT01]}
        pipelines: [lung-nodule]
        destinations: [pacs]
      - name: everything-else
        fallback: true
        pipelines: [series-summary]
        destinations: [pacs]

Semantics:

- Routes are tried in order; the first that matches wins, unless it says ``continue: true``, in
  which case later routes are tried too. A route with ``fallback: true`` (at most one, last, no
  ``when``) applies only when no other route matched. No route and no fallback: no job (logged).
- A condition is a tag test (``tag`` + exactly one operator), an AE test (``calling_ae`` /
  ``called_ae`` with ``equals`` / ``one_of`` / ``regex``) or a combination ``all`` / ``any`` / ``not``
  (nestable). A route without ``when`` matches everything.
- Operators: ``equals`` (a string compares as text, a number numerically), ``one_of``, ``regex``
  (``re.search``: anchor with ^...$ for a full match; compiled at load), ``range`` (``min`` /
  ``max``, inclusive, numeric), ``present: true``, ``absent: true``. ``ignore_case`` applies to
  text comparisons. For a multi-valued attribute (ImageType) a test holds if any value satisfies it.
  An empty value counts as absent.
- Every condition is evaluated (no short-circuit) so the explanation shows each outcome.

No ``eval``: conditions are data, interpreted by the code below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import structlog
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from node.errors import RoutingError

log = structlog.get_logger(__name__)

ROUTE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PIPELINE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# Attributes the router must never see or print: routing on them would put them in explanations.
FORBIDDEN_KEYWORDS = frozenset(
    {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs", "PatientAddress"}
)

Scalar = str | float
AttributeValue = str | float | int | list[str] | list[float] | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- values --------------------------------------------------------------------------------------


def _values(raw: object) -> list[str | float]:
    """An attribute value as a list of non-empty scalars (multi-valued stays multi, empty = absent)."""
    if raw is None:
        return []
    items: Iterable[object] = raw if isinstance(raw, list | tuple | MultiValue) else [raw]
    out: list[str | float] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, bool):
            out.append(str(item))
        elif isinstance(item, int | float):
            out.append(float(item))
        else:
            text = str(item).strip()
            if text:
                out.append(text)
    return out


def _as_number(value: str | float) -> float | None:
    if isinstance(value, float):
        return value
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _show(values: list[str | float]) -> str:
    if not values:
        return "absent"
    shown = [f"{v:g}" if isinstance(v, float) else repr(v) for v in values]
    return shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditionResult:
    matched: bool
    text: str
    children: tuple[ConditionResult, ...] = ()

    def lines(self, indent: int = 0) -> list[str]:
        mark = "✓" if self.matched else "✗"
        out = [f"{'  ' * indent}{mark} {self.text}"]
        for child in self.children:
            out.extend(child.lines(indent + 1))
        return out


@dataclass(frozen=True)
class _Context:
    attributes: Mapping[str, object]
    calling_ae: str
    called_ae: str


# --- conditions ----------------------------------------------------------------------------------


class NumericRange(_Model):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> NumericRange:
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min:g} is greater than max {self.max:g}")
        return self

    def describe(self) -> str:
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "+inf" if self.max is None else f"{self.max:g}"
        return f"[{lo}, {hi}]"


class _ValueTest(_Model):
    """The operators shared by tag and AE tests; exactly one must be set."""

    equals: Scalar | None = None
    one_of: list[Scalar] | None = Field(default=None, min_length=1)
    regex: str | None = None
    ignore_case: bool = False
    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)
    _regex_error: str | None = PrivateAttr(default=None)

    OPERATORS: ClassVar[tuple[str, ...]] = ("equals", "one_of", "regex")

    def model_post_init(self, context: Any, /) -> None:
        if self.regex is not None:
            # Compiled once at load. An invalid pattern is reported by the enclosing Route, whose
            # error names the rule (see Route._compile_check).
            try:
                self._pattern = re.compile(self.regex, re.IGNORECASE if self.ignore_case else 0)
            except re.error as exc:
                self._regex_error = f"invalid regex {self.regex!r}: {exc}"

    def _operators_set(self) -> list[str]:
        return [name for name in self.OPERATORS if getattr(self, name) not in (None, False)]

    def _check_one_operator(self) -> None:
        chosen = self._operators_set()
        if len(chosen) != 1:
            allowed = ", ".join(self.OPERATORS)
            raise ValueError(f"exactly one operator of {allowed} is required, got {chosen or 'none'}")

    def _text_equal(self, value: str | float, expected: Scalar) -> bool:
        if isinstance(expected, float | int) and not isinstance(expected, bool):
            number = _as_number(value)
            return number is not None and math.isclose(number, float(expected), rel_tol=1e-9, abs_tol=1e-9)
        text = f"{value:g}" if isinstance(value, float) else value
        if self.ignore_case:
            return text.casefold() == str(expected).casefold()
        return text == str(expected)

    def _test(self, values: list[str | float], subject: str) -> ConditionResult:
        shown = _show(values)
        case = " (ignoring case)" if self.ignore_case else ""
        if self.equals is not None:
            ok = any(self._text_equal(v, self.equals) for v in values)
            return ConditionResult(
                ok, f"{subject} {shown} {'equals' if ok else 'does not equal'} {self.equals!r}{case}"
            )
        if self.one_of is not None:
            ok = any(self._text_equal(v, e) for v in values for e in self.one_of)
            return ConditionResult(ok, f"{subject} {shown} {'is' if ok else 'is not'} one of {self.one_of!r}{case}")
        if self.regex is not None:
            if self._pattern is None:
                raise RoutingError(self._regex_error or f"regex {self.regex!r} was not compiled")
            pattern = self._pattern
            ok = any(pattern.search(f"{v:g}" if isinstance(v, float) else v) for v in values)
            return ConditionResult(
                ok, f"{subject} {shown} {'matches' if ok else 'does not match'} /{self.regex}/{case}"
            )
        raise RoutingError(f"condition on {subject} has no operator")  # prevented by validation

    def regex_errors(self) -> list[str]:
        return [self._regex_error] if self._regex_error else []


class TagCondition(_ValueTest):
    """A test on one DICOM attribute of the series/study, named by keyword."""

    tag: str
    range: NumericRange | None = None
    present: Literal[True] | None = None
    absent: Literal[True] | None = None

    OPERATORS: ClassVar[tuple[str, ...]] = ("equals", "one_of", "regex", "range", "present", "absent")

    @field_validator("tag")
    @classmethod
    def _known_keyword(cls, keyword: str) -> str:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM attribute keyword (e.g. Modality, SliceThickness)")
        if keyword in FORBIDDEN_KEYWORDS:
            raise ValueError(f"routing on {keyword} is not allowed: it would put patient identifiers in logs")
        return keyword

    @model_validator(mode="after")
    def _one_operator(self) -> TagCondition:
        self._check_one_operator()
        return self

    def evaluate(self, ctx: _Context) -> ConditionResult:
        values = _values(ctx.attributes.get(self.tag))
        shown = _show(values)
        if self.present:
            return ConditionResult(
                bool(values), f"{self.tag} is {'present' if values else 'absent'} ({shown}); required present"
            )
        if self.absent:
            return ConditionResult(
                not values, f"{self.tag} is {'present' if values else 'absent'} ({shown}); required absent"
            )
        if self.range is not None:
            numbers = [n for n in (_as_number(v) for v in values) if n is not None]
            lo, hi = self.range.min, self.range.max
            ok = any((lo is None or n >= lo) and (hi is None or n <= hi) for n in numbers)
            if values and not numbers:
                return ConditionResult(
                    False, f"{self.tag} {shown} is not numeric; required within {self.range.describe()}"
                )
            return ConditionResult(ok, f"{self.tag} {shown} {'is' if ok else 'is not'} within {self.range.describe()}")
        return self._test(values, self.tag)


class AeTest(_ValueTest):
    @model_validator(mode="after")
    def _one_operator(self) -> AeTest:
        self._check_one_operator()
        return self


class CallingAeCondition(_Model):
    calling_ae: AeTest

    def evaluate(self, ctx: _Context) -> ConditionResult:
        return self.calling_ae._test(_values(ctx.calling_ae), "calling AE")

    def regex_errors(self) -> list[str]:
        return self.calling_ae.regex_errors()


class CalledAeCondition(_Model):
    called_ae: AeTest

    def evaluate(self, ctx: _Context) -> ConditionResult:
        return self.called_ae._test(_values(ctx.called_ae), "called AE")

    def regex_errors(self) -> list[str]:
        return self.called_ae.regex_errors()


class AllCondition(_Model):
    all: list[Condition] = Field(min_length=1)

    def evaluate(self, ctx: _Context) -> ConditionResult:
        results = tuple(c.evaluate(ctx) for c in self.all)
        ok = all(r.matched for r in results)
        return ConditionResult(ok, f"all of ({sum(r.matched for r in results)}/{len(results)} hold):", results)

    def regex_errors(self) -> list[str]:
        return [e for c in self.all for e in c.regex_errors()]


class AnyCondition(_Model):
    any: list[Condition] = Field(min_length=1)

    def evaluate(self, ctx: _Context) -> ConditionResult:
        results = tuple(c.evaluate(ctx) for c in self.any)
        ok = any(r.matched for r in results)
        return ConditionResult(ok, f"any of ({sum(r.matched for r in results)}/{len(results)} hold):", results)

    def regex_errors(self) -> list[str]:
        return [e for c in self.any for e in c.regex_errors()]


class NotCondition(_Model):
    not_: Condition = Field(alias="not")

    def evaluate(self, ctx: _Context) -> ConditionResult:
        inner = self.not_.evaluate(ctx)
        return ConditionResult(not inner.matched, "not:", (inner,))

    def regex_errors(self) -> list[str]:
        return self.not_.regex_errors()


_CONDITION_KEYS = ("tag", "calling_ae", "called_ae", "all", "any", "not")


def _condition_kind(raw: Any) -> str | None:
    """Which kind of condition a YAML mapping (or model) is, from the key it carries."""
    if isinstance(raw, dict):
        present = [k for k in _CONDITION_KEYS if k in raw]
        return present[0] if len(present) == 1 else None
    kinds: dict[type, str] = {
        TagCondition: "tag",
        CallingAeCondition: "calling_ae",
        CalledAeCondition: "called_ae",
        AllCondition: "all",
        AnyCondition: "any",
        NotCondition: "not",
    }
    return kinds.get(type(raw))


Condition = Annotated[
    Annotated[TagCondition, Tag("tag")]
    | Annotated[CallingAeCondition, Tag("calling_ae")]
    | Annotated[CalledAeCondition, Tag("called_ae")]
    | Annotated[AllCondition, Tag("all")]
    | Annotated[AnyCondition, Tag("any")]
    | Annotated[NotCondition, Tag("not")],
    Discriminator(
        _condition_kind,
        custom_error_type="invalid_condition",
        custom_error_message="a condition needs exactly one of the keys: " + ", ".join(_CONDITION_KEYS),
    ),
]

for _model in (AllCondition, AnyCondition, NotCondition):
    _model.model_rebuild()


# --- routes --------------------------------------------------------------------------------------


class Route(_Model):
    name: str = Field(pattern=ROUTE_NAME_PATTERN)
    when: Condition | None = Field(default=None, description="No condition: the route matches every series.")
    pipelines: list[Annotated[str, Field(pattern=PIPELINE_NAME_PATTERN)]] = Field(min_length=1)
    destinations: list[str] = Field(default_factory=list, description="Names under `destinations:`.")
    continue_: bool = Field(default=False, alias="continue", description="Also try the routes after this one.")
    fallback: bool = Field(default=False, description="Applies only when no other route matched.")

    @model_validator(mode="after")
    def _compile_check(self) -> Route:
        errors = self.when.regex_errors() if self.when is not None else []
        if errors:
            raise ValueError(f"route {self.name!r}: " + "; ".join(errors))
        if self.fallback and self.when is not None:
            raise ValueError(f"route {self.name!r}: a fallback route has no `when`")
        if self.fallback and self.continue_:
            raise ValueError(f"route {self.name!r}: `continue` means nothing on a fallback route")
        if len(set(self.pipelines)) != len(self.pipelines):
            raise ValueError(f"route {self.name!r}: a pipeline is listed twice")
        return self

    def keywords(self) -> set[str]:
        """DICOM keywords this route's conditions read."""
        return _keywords(self.when) if self.when is not None else set()

    def evaluate(self, ctx: _Context) -> ConditionResult:
        if self.when is None:
            return ConditionResult(True, "no conditions (matches every series)")
        return self.when.evaluate(ctx)


class RoutingSection(_Model):
    """The ``routes:`` (and, for cross-checking, ``destinations:``) keys of the node's config."""

    routes: list[Route] = Field(default_factory=list)
    destinations: dict[str, Any] | None = Field(
        default=None, description="If given, every destination a route names must be configured here."
    )

    @model_validator(mode="after")
    def _consistent(self) -> RoutingSection:
        names = [r.name for r in self.routes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"route names must be unique, repeated: {duplicates}")
        fallbacks = [i for i, r in enumerate(self.routes) if r.fallback]
        if len(fallbacks) > 1:
            raise ValueError("at most one route may be the fallback")
        if fallbacks and fallbacks[0] != len(self.routes) - 1:
            raise ValueError(f"the fallback route {self.routes[fallbacks[0]].name!r} must be the last route")
        if self.destinations is not None:
            for route in self.routes:
                unknown = [d for d in route.destinations if d not in self.destinations]
                if unknown:
                    raise ValueError(
                        f"route {route.name!r} names unknown destination(s) {unknown}; "
                        f"configured: {sorted(self.destinations)}"
                    )
        return self


def _keywords(condition: BaseModel) -> set[str]:
    if isinstance(condition, TagCondition):
        return {condition.tag}
    if isinstance(condition, AllCondition):
        return set().union(*(_keywords(c) for c in condition.all))
    if isinstance(condition, AnyCondition):
        return set().union(*(_keywords(c) for c in condition.any))
    if isinstance(condition, NotCondition):
        return _keywords(condition.not_)
    return set()


def unindexed_keywords(routes: Sequence[Route], indexed: Iterable[str]) -> dict[str, list[str]]:
    """Route name -> keywords it tests that the index does not keep.

    The live node evaluates rules on the attributes the index stores per series; a rule on any other
    keyword would always see "absent". Check this at start-up and refuse such a config.
    """
    available = set(indexed)
    out: dict[str, list[str]] = {}
    for route in routes:
        missing = sorted(route.keywords() - available)
        if missing:
            out[route.name] = missing
    return out


def parse_routes(raw: object, destinations: Mapping[str, object] | None = None) -> list[Route]:
    """Validate a ``routes:`` list; raises pydantic ``ValidationError`` naming the field and the rule."""
    section = RoutingSection.model_validate(
        {
            "routes": raw if raw is not None else [],
            "destinations": dict(destinations) if destinations else None,
        }
    )
    return list(section.routes)


def load_routes_from_yaml(path: Path) -> RoutingSection:
    """Read ``routes:`` and ``destinations:`` from the node's YAML config.

    Stand-in until ``node/config.py`` lands: the lead may replace it with the full config model, which
    should embed ``list[Route]`` and the destination models as they are.
    """
    document = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(document, dict):
        raise RoutingError(f"{path}: the config must be a YAML mapping")
    destinations = document.get("destinations")
    if destinations is not None:
        from node.export.destinations import parse_destinations

        parse_destinations(destinations)  # fail fast on a bad destination too
    return RoutingSection.model_validate({"routes": document.get("routes") or [], "destinations": destinations})


# --- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteEvaluation:
    route: Route
    matched: bool
    # False when an earlier route already won (first match wins); the result is still shown.
    considered: bool
    result: ConditionResult

    def explanation(self) -> str:
        head = ("fallback route " if self.route.fallback else "route ") + repr(self.route.name)
        if not self.considered:
            verdict = "not considered (an earlier route matched without `continue`)"
        elif self.route.fallback:
            verdict = "APPLIES (no other route matched)" if self.matched else "not needed (another route matched)"
        else:
            verdict = "MATCHES" if self.matched else "does not match"
        lines = [f"{head}: {verdict}"]
        if not self.route.fallback:
            lines.extend(self.result.lines(indent=1))
        return "\n".join(lines)


@dataclass(frozen=True)
class RoutingDecision:
    matched: tuple[Route, ...]
    evaluations: tuple[RouteEvaluation, ...]
    used_fallback: bool = False

    @property
    def pipelines(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for r in self.matched for p in r.pipelines))

    @property
    def destinations(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for r in self.matched for d in r.destinations))

    def jobs(self) -> dict[str, tuple[str, ...]]:
        """pipeline -> destinations its results go to (merged over matching routes, order kept)."""
        out: dict[str, dict[str, None]] = {}
        for route in self.matched:
            for pipeline in route.pipelines:
                out.setdefault(pipeline, {}).update(dict.fromkeys(route.destinations))
        return {p: tuple(d) for p, d in out.items()}

    def explanation(self) -> str:
        lines = [e.explanation() for e in self.evaluations]
        if not self.matched:
            lines.append("no route matched and there is no fallback: no job")
        else:
            names = ", ".join(repr(r.name) for r in self.matched)
            lines.append(
                f"decision: {names} -> pipelines {list(self.pipelines)}, destinations {list(self.destinations)}"
            )
        return "\n".join(lines)


def attributes_from_dataset(ds: Dataset) -> dict[str, AttributeValue]:
    """Plain values by keyword from a pydicom Dataset (top level, no sequences, no patient identifiers)."""
    out: dict[str, AttributeValue] = {}
    for element in ds:
        keyword = element.keyword
        if not keyword or keyword in FORBIDDEN_KEYWORDS or element.tag.group == 0x7FE0:
            continue
        value = element.value
        if isinstance(value, DicomSequence | bytes | bytearray):
            continue
        if isinstance(value, MultiValue | list | tuple):
            out[keyword] = [str(v) for v in value]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[keyword] = float(value)
        elif value is None:
            out[keyword] = None
        else:
            out[keyword] = str(value)
    return out


def evaluate_routes(
    routes: Sequence[Route],
    attributes: Mapping[str, object] | Dataset,
    calling_ae: str,
    called_ae: str,
    *,
    series_uid: str | None = None,
) -> RoutingDecision:
    """Decide which routes apply to one series; every route is evaluated so the explanation is complete.

    ``series_uid`` names the series in the log line when ``attributes`` (the index's routing tags) lack it.
    """
    attrs: Mapping[str, object] = attributes_from_dataset(attributes) if isinstance(attributes, Dataset) else attributes
    ctx = _Context(attrs, calling_ae.strip(), called_ae.strip())
    evaluations: list[RouteEvaluation] = []
    matched: list[Route] = []
    stopped = False
    fallback: Route | None = None
    for route in routes:
        if route.fallback:
            fallback = route
            continue
        result = route.evaluate(ctx)
        considered = not stopped
        if considered and result.matched:
            matched.append(route)
            stopped = not route.continue_
        evaluations.append(RouteEvaluation(route, considered and result.matched, considered, result))
    used_fallback = False
    if fallback is not None:
        used_fallback = not matched
        if used_fallback:
            matched.append(fallback)
        evaluations.append(RouteEvaluation(fallback, used_fallback, True, ConditionResult(used_fallback, "fallback")))
    logged_uid = series_uid or attrs.get("SeriesInstanceUID")
    if matched:
        log.info(
            "route_decision",
            series_instance_uid=logged_uid,
            routes=[r.name for r in matched],
            fallback=used_fallback,
        )
    else:
        log.info("route_no_match_no_job", series_instance_uid=logged_uid, routes_tried=len(evaluations))
    return RoutingDecision(tuple(matched), tuple(evaluations), used_fallback)
