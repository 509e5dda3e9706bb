"""Why a series takes the route it takes: the evaluation of every route and condition, as text.

Used by ``ainode route-test`` and by the node's log line for a series no route chose. The text names
tags and values only: routing attributes hold no patient identity (``node.dicom_attributes``).
"""

from __future__ import annotations

from node.route.evaluation import ConditionResult, RouteEvaluation, RoutingDecision


def condition_lines(result: ConditionResult, indent: int = 0) -> list[str]:
    """The condition and its sub-conditions as an indented tree, ✓ for those that hold."""
    mark = "✓" if result.matched else "✗"
    out = [f"{'  ' * indent}{mark} {result.text}"]
    for child in result.children:
        out.extend(condition_lines(child, indent + 1))
    return out


def explain_route(evaluation: RouteEvaluation) -> str:
    route = evaluation.route
    head = ("fallback route " if route.fallback else "route ") + repr(route.name)
    if not evaluation.considered:
        verdict = "not considered (an earlier route matched without `continue`)"
    elif route.fallback:
        verdict = "APPLIES (no other route matched)" if evaluation.matched else "not needed (another route matched)"
    else:
        verdict = "MATCHES" if evaluation.matched else "does not match"
    lines = [f"{head}: {verdict}"]
    if not route.fallback:
        lines.extend(condition_lines(evaluation.result, indent=1))
    return "\n".join(lines)


def explain_decision(decision: RoutingDecision) -> str:
    """Every route's evaluation, then the decision (routes, pipelines, destinations) or why there is none."""
    lines = [explain_route(e) for e in decision.evaluations]
    if not decision.matched:
        lines.append("no route matched and there is no fallback: no job")
    else:
        names = ", ".join(repr(r.name) for r in decision.matched)
        lines.append(
            f"decision: {names} -> pipelines {list(decision.pipelines)}, destinations {list(decision.destinations)}"
        )
    return "\n".join(lines)
