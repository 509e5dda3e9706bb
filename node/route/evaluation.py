"""Routing: which routes of the config apply to one series (the rules' models: ``node/config/routes.py``).

Routes are tried in order; the first that matches wins unless it says ``continue``; a fallback
applies only when nothing else matched. Every condition is evaluated (no short-circuit), each with
a one-line statement of its outcome, so ``node/route/explanation.py`` can show all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.config.routes import (
    AllCondition,
    AnyCondition,
    CalledAeCondition,
    CallingAeCondition,
    Condition,
    NotCondition,
    Route,
    Scalar,
    TagCondition,
    ValueTest,
)
from node.dicom_attributes import routing_attributes
from node.errors import RoutingError

log = structlog.get_logger(__name__)


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditionResult:
    """One condition's outcome, a statement of it, and its sub-conditions' results."""

    matched: bool
    text: str
    children: tuple[ConditionResult, ...] = ()


@dataclass(frozen=True)
class RouteEvaluation:
    route: Route
    matched: bool
    # False when an earlier route already won (first match wins); the result is still shown.
    considered: bool
    result: ConditionResult


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


@dataclass(frozen=True)
class _Context:
    attributes: Mapping[str, object]
    calling_ae: str
    called_ae: str


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


# --- conditions ----------------------------------------------------------------------------------


def _text_equal(test: ValueTest, value: str | float, expected: Scalar) -> bool:
    if isinstance(expected, float | int) and not isinstance(expected, bool):
        number = _as_number(value)
        return number is not None and math.isclose(number, float(expected), rel_tol=1e-9, abs_tol=1e-9)
    text = f"{value:g}" if isinstance(value, float) else value
    if test.ignore_case:
        return text.casefold() == str(expected).casefold()
    return text == str(expected)


def _value_test(test: ValueTest, values: list[str | float], subject: str) -> ConditionResult:
    shown = _show(values)
    case = " (ignoring case)" if test.ignore_case else ""
    if test.equals is not None:
        ok = any(_text_equal(test, v, test.equals) for v in values)
        return ConditionResult(ok, f"{subject} {shown} {'equals' if ok else 'does not equal'} {test.equals!r}{case}")
    if test.one_of is not None:
        ok = any(_text_equal(test, v, e) for v in values for e in test.one_of)
        return ConditionResult(ok, f"{subject} {shown} {'is' if ok else 'is not'} one of {test.one_of!r}{case}")
    if test.regex is not None:
        pattern = test.pattern
        if pattern is None:
            raise RoutingError("; ".join(test.regex_errors()) or f"regex {test.regex!r} was not compiled")
        ok = any(pattern.search(f"{v:g}" if isinstance(v, float) else v) for v in values)
        return ConditionResult(ok, f"{subject} {shown} {'matches' if ok else 'does not match'} /{test.regex}/{case}")
    raise RoutingError(f"condition on {subject} has no operator")  # prevented by validation


def _tag_condition(condition: TagCondition, ctx: _Context) -> ConditionResult:
    tag = condition.tag
    values = _values(ctx.attributes.get(tag))
    shown = _show(values)
    if condition.present:
        return ConditionResult(
            bool(values), f"{tag} is {'present' if values else 'absent'} ({shown}); required present"
        )
    if condition.absent:
        return ConditionResult(not values, f"{tag} is {'present' if values else 'absent'} ({shown}); required absent")
    if condition.range is not None:
        numbers = [n for n in (_as_number(v) for v in values) if n is not None]
        lo, hi = condition.range.min, condition.range.max
        ok = any((lo is None or n >= lo) and (hi is None or n <= hi) for n in numbers)
        if values and not numbers:
            return ConditionResult(False, f"{tag} {shown} is not numeric; required within {condition.range.describe()}")
        return ConditionResult(ok, f"{tag} {shown} {'is' if ok else 'is not'} within {condition.range.describe()}")
    return _value_test(condition, values, tag)


def evaluate_condition(condition: Condition, ctx: _Context) -> ConditionResult:
    if isinstance(condition, TagCondition):
        return _tag_condition(condition, ctx)
    if isinstance(condition, CallingAeCondition):
        return _value_test(condition.calling_ae, _values(ctx.calling_ae), "calling AE")
    if isinstance(condition, CalledAeCondition):
        return _value_test(condition.called_ae, _values(ctx.called_ae), "called AE")
    if isinstance(condition, AllCondition):
        results = tuple(evaluate_condition(c, ctx) for c in condition.all)
        held = sum(r.matched for r in results)
        return ConditionResult(all(r.matched for r in results), f"all of ({held}/{len(results)} hold):", results)
    if isinstance(condition, AnyCondition):
        results = tuple(evaluate_condition(c, ctx) for c in condition.any)
        held = sum(r.matched for r in results)
        return ConditionResult(any(r.matched for r in results), f"any of ({held}/{len(results)} hold):", results)
    if isinstance(condition, NotCondition):
        inner = evaluate_condition(condition.not_, ctx)
        return ConditionResult(not inner.matched, "not:", (inner,))
    raise RoutingError(f"unknown condition {type(condition).__name__}")  # prevented by validation


def _evaluate_route(route: Route, ctx: _Context) -> ConditionResult:
    if route.when is None:
        return ConditionResult(True, "no conditions (matches every series)")
    return evaluate_condition(route.when, ctx)


# --- routes --------------------------------------------------------------------------------------


def evaluate_routes(
    routes: Sequence[Route],
    attributes: Mapping[str, object] | Dataset,
    calling_ae: str,
    called_ae: str,
    *,
    series_uid: str | None = None,
) -> RoutingDecision:
    """Decide which routes apply to one series; every route is evaluated so the explanation is complete.

    ``attributes`` are the series' routing attributes (the index's), or a Dataset they are taken from
    as the store takes them (:func:`node.dicom_attributes.routing_attributes`). ``series_uid`` names the
    series in the log line when ``attributes`` lack it.
    """
    attrs: Mapping[str, object] = routing_attributes(attributes) if isinstance(attributes, Dataset) else attributes
    ctx = _Context(attrs, calling_ae.strip(), called_ae.strip())
    evaluations: list[RouteEvaluation] = []
    matched: list[Route] = []
    stopped = False
    fallback: Route | None = None
    for route in routes:
        if route.fallback:
            fallback = route
            continue
        result = _evaluate_route(route, ctx)
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
