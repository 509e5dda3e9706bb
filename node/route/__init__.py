"""Routing: which pipelines run on a series and where their results go, decided by rules on DICOM tags."""

from node.route.rules import (
    Route,
    RouteEvaluation,
    RoutingDecision,
    RoutingSection,
    attributes_from_dataset,
    evaluate_routes,
    load_routes_from_yaml,
    parse_routes,
)

__all__ = [
    "Route",
    "RouteEvaluation",
    "RoutingDecision",
    "RoutingSection",
    "attributes_from_dataset",
    "evaluate_routes",
    "load_routes_from_yaml",
    "parse_routes",
]
