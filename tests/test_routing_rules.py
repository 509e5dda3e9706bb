"""Routing rules: operators, nesting, ordering/continue/fallback, config errors, explanations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydantic import ValidationError

from demo.paths import PHILIPS_CT, SIEMENS_CT
from node.config import load_config
from node.config.routes import Route, parse_routes, unindexed_keywords
from node.dicom_attributes import routing_attributes
from node.errors import ConfigError
from node.route.evaluation import evaluate_routes
from node.route.explanation import explain_decision, explain_route
from tests.result_objects import ct_files

pytestmark = pytest.mark.unit

CHEST_CT: dict[str, object] = {
    "Modality": "CT",
    "BodyPartExamined": "CHEST",
    "SeriesDescription": "LUNG 1.0 B70f",
    "SliceThickness": 1.0,
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "StudyDescription": "CT CHEST W/O",
    "Manufacturer": "SIEMENS",
    "SeriesInstanceUID": "1.2.3",
}


def one_route(when: dict[str, Any]) -> list[Route]:
    return parse_routes([{"name": "r", "when": when, "pipelines": ["lung-nodule"]}])


def matches(when: dict[str, Any], attrs: dict[str, object] = CHEST_CT, calling: str = "ORTHANC") -> bool:
    return bool(evaluate_routes(one_route(when), attrs, calling, "AINODE").matched)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"tag": "Modality", "equals": "CT"}, True),
        ({"tag": "Modality", "equals": "ct"}, False),
        ({"tag": "Modality", "equals": "ct", "ignore_case": True}, True),
        ({"tag": "SliceThickness", "equals": 1}, True),  # numbers compare numerically
        ({"tag": "SliceThickness", "equals": "1.0"}, False),  # text compares as text ("1" vs "1.0")
        ({"tag": "BodyPartExamined", "one_of": ["LUNG", "CHEST"]}, True),
        ({"tag": "BodyPartExamined", "one_of": ["HEAD", "ABDOMEN"]}, False),
        ({"tag": "SeriesDescription", "regex": r"\bB70f$"}, True),
        ({"tag": "SeriesDescription", "regex": "^lung", "ignore_case": True}, True),
        ({"tag": "SeriesDescription", "regex": "^lung"}, False),
        ({"tag": "SliceThickness", "range": {"max": 2.5}}, True),
        ({"tag": "SliceThickness", "range": {"min": 1.5, "max": 2.5}}, False),
        ({"tag": "SliceThickness", "range": {"min": 1.0}}, True),  # inclusive
        ({"tag": "Manufacturer", "range": {"min": 1}}, False),  # not numeric never matches a range
        ({"tag": "StudyDescription", "present": True}, True),
        ({"tag": "ContrastBolusAgent", "present": True}, False),
        ({"tag": "ContrastBolusAgent", "absent": True}, True),
        ({"tag": "Modality", "absent": True}, False),
        ({"tag": "ImageType", "equals": "AXIAL"}, True),  # multi-valued: any value
        ({"tag": "ImageType", "one_of": ["LOCALIZER", "DERIVED"]}, False),
        ({"calling_ae": {"equals": "ORTHANC"}}, True),
        ({"calling_ae": {"one_of": ["CT01", "CT02"]}}, False),
        ({"called_ae": {"regex": "^AI"}}, True),
        ({"not": {"tag": "ImageType", "equals": "LOCALIZER"}}, True),
        ({"all": [{"tag": "Modality", "equals": "CT"}, {"tag": "Manufacturer", "equals": "GE"}]}, False),
        ({"any": [{"tag": "Modality", "equals": "MR"}, {"tag": "Manufacturer", "equals": "SIEMENS"}]}, True),
        (
            {
                "all": [
                    {"tag": "Modality", "equals": "CT"},
                    {
                        "any": [
                            {"not": {"tag": "SliceThickness", "range": {"min": 3}}},
                            {"tag": "X", "present": True},
                        ]
                    },
                ]
            },
            "invalid",
        ),
        (
            {
                "all": [
                    {"tag": "Modality", "equals": "CT"},
                    {
                        "any": [
                            {"not": {"tag": "SliceThickness", "range": {"min": 3}}},
                            {"called_ae": {"equals": "Z"}},
                        ]
                    },
                ]
            },
            True,
        ),
    ],
)
def test_operators_and_nesting(when: dict[str, Any], expected: bool | str) -> None:
    if expected == "invalid":
        with pytest.raises(ValidationError, match="not a DICOM attribute keyword"):
            one_route(when)
        return
    assert matches(when) is expected


def test_empty_values_count_as_absent_and_numbers_from_strings() -> None:
    attrs: dict[str, object] = {"BodyPartExamined": "  ", "SliceThickness": "0.625"}
    assert matches({"tag": "BodyPartExamined", "absent": True}, attrs)
    assert matches({"tag": "SliceThickness", "range": {"max": 1}}, attrs)


ROUTES_YAML = """
- name: thin-chest
  when:
    all:
      - {tag: Modality, equals: CT}
      - {tag: SliceThickness, range: {max: 2.5}}
  pipelines: [lung-nodule]
  destinations: [pacs]
  continue: true
- name: any-ct
  when: {tag: Modality, equals: CT}
  pipelines: [series-summary]
  destinations: [pacs, web]
- name: never-reached
  when: {tag: Modality, equals: CT}
  pipelines: [other]
- name: rest
  fallback: true
  pipelines: [series-summary]
"""


def test_order_continue_first_match_and_fallback() -> None:
    routes = parse_routes(yaml.safe_load(ROUTES_YAML))
    thin = evaluate_routes(routes, CHEST_CT, "ORTHANC", "AINODE")
    assert [r.name for r in thin.matched] == ["thin-chest", "any-ct"]  # continue: true, then first match wins
    assert thin.jobs() == {"lung-nodule": ("pacs",), "series-summary": ("pacs", "web")}
    assert not thin.used_fallback
    never = next(e for e in thin.evaluations if e.route.name == "never-reached")
    assert never.considered is False and never.result.matched is True
    assert "not considered" in explain_route(never)

    thick = evaluate_routes(routes, {**CHEST_CT, "SliceThickness": 5.0}, "ORTHANC", "AINODE")
    assert [r.name for r in thick.matched] == ["any-ct"]

    mr = evaluate_routes(routes, {"Modality": "MR"}, "ORTHANC", "AINODE")
    assert [r.name for r in mr.matched] == ["rest"] and mr.used_fallback
    assert mr.pipelines == ("series-summary",) and mr.destinations == ()


def test_no_route_no_fallback_means_no_job() -> None:
    routes = one_route({"tag": "Modality", "equals": "CT"})
    decision = evaluate_routes(routes, {"Modality": "MR"}, "X", "Y")
    assert decision.matched == () and decision.jobs() == {}
    assert "no route matched and there is no fallback: no job" in explain_decision(decision)


def test_explanation_shows_every_condition_outcome() -> None:
    routes = one_route(
        {
            "all": [
                {"tag": "Modality", "equals": "CT"},
                {"tag": "SliceThickness", "range": {"max": 0.5}},
                {"calling_ae": {"one_of": ["CT01"]}},
            ]
        }
    )
    text = explain_decision(evaluate_routes(routes, CHEST_CT, "ORTHANC", "AINODE"))
    assert "route 'r': does not match" in text
    assert "✗ all of (1/3 hold):" in text
    assert "✓ Modality 'CT' equals 'CT'" in text
    assert "✗ SliceThickness 1 is not within [-inf, 0.5]" in text
    assert "✗ calling AE 'ORTHANC' is not one of ['CT01']" in text


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (
            [
                {
                    "name": "bad-regex",
                    "when": {"tag": "SeriesDescription", "regex": "(lung"},
                    "pipelines": ["p"],
                }
            ],
            "route 'bad-regex': invalid regex '(lung'",
        ),
        (
            [{"name": "r", "when": {"tag": "Modalty", "equals": "CT"}, "pipelines": ["p"]}],
            "routes.0.when.tag.tag",
        ),
        (
            [{"name": "r", "when": {"tag": "Modality", "equals": "CT", "regex": "x"}, "pipelines": ["p"]}],
            "exactly one operator",
        ),
        ([{"name": "r", "when": {"tag": "Modality"}, "pipelines": ["p"]}], "exactly one operator"),
        (
            [{"name": "r", "when": {"tag": "Modality", "equal": "CT"}, "pipelines": ["p"]}],
            "routes.0.when.tag.equal",
        ),
        ([{"name": "r", "when": {"tag": "PatientName", "present": True}, "pipelines": ["p"]}], "not allowed"),
        (
            [
                {
                    "name": "r",
                    "when": {"tag": "SliceThickness", "range": {"min": 3, "max": 1}},
                    "pipelines": ["p"],
                }
            ],
            "greater than max",
        ),
        ([{"name": "r", "when": {"all": []}, "pipelines": ["p"]}], "routes.0.when.all.all"),
        (
            [
                {
                    "name": "r",
                    "when": {"any": [{"tag": "Modality", "equals": "CT"}, {"nor": 1}]},
                    "pipelines": ["p"],
                }
            ],
            "routes.0.when.any.any.1",
        ),
        ([{"name": "r", "pipelines": []}], "routes.0.pipelines"),
        ([{"name": "r", "pipelines": ["p"], "colour": "red"}], "routes.0.colour"),
        ([{"name": "a", "pipelines": ["p"]}, {"name": "a", "pipelines": ["p"]}], "unique"),
        (
            [{"name": "f", "fallback": True, "pipelines": ["p"]}, {"name": "a", "pipelines": ["p"]}],
            "must be the last",
        ),
        (
            [
                {
                    "name": "f",
                    "fallback": True,
                    "when": {"tag": "Modality", "equals": "CT"},
                    "pipelines": ["p"],
                }
            ],
            "fallback route has no `when`",
        ),
    ],
)
def test_bad_config_is_a_validation_error_naming_the_field(raw: list[dict[str, Any]], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_routes(raw)
    assert needle in str(err.value)


def test_unknown_destination_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"route 'r' names unknown destination\(s\) \['nope'\]"):
        parse_routes([{"name": "r", "pipelines": ["p"], "destinations": ["nope"]}], destinations={"pacs": {}})


def test_unindexed_keywords() -> None:
    routes = parse_routes(yaml.safe_load(ROUTES_YAML)) + one_route(
        {"any": [{"tag": "KVP", "range": {"max": 100}}, {"not": {"tag": "Modality", "equals": "CT"}}]}
    )
    assert unindexed_keywords(routes, ["Modality", "SliceThickness"]) == {"r": ["KVP"]}


def test_regex_compiled_once_at_load() -> None:
    routes = one_route({"tag": "SeriesDescription", "regex": "lung", "ignore_case": True})
    when = routes[0].when
    assert when is not None
    assert when._pattern is not None and when._pattern.flags & 2  # re.IGNORECASE


@pytest.mark.needs("siemens-ct", "philips-ct")
def test_dataset_adapter_and_real_headers() -> None:
    siemens = pydicom.dcmread(ct_files(SIEMENS_CT)[0], stop_before_pixels=True)
    philips = pydicom.dcmread(ct_files(PHILIPS_CT)[0], stop_before_pixels=True)
    attrs = routing_attributes(siemens)
    assert attrs["Modality"] == "CT" and attrs["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL", "CT_SOM5 SPI"]
    assert isinstance(attrs["SliceThickness"], float)
    assert "PatientName" not in attrs and "PatientID" not in attrs
    routes = parse_routes(yaml.safe_load(ROUTES_YAML))
    assert [r.name for r in evaluate_routes(routes, siemens, "ORTHANC", "AINODE").matched] == ["any-ct"]  # 3 mm
    assert [r.name for r in evaluate_routes(routes, philips, "ORTHANC", "AINODE").matched] == ["any-ct"]


def test_routes_load_with_the_node_config(tmp_path: Path) -> None:
    """One loader for routes: the node's (`ainode serve` and `ainode route-test` both call it)."""
    config = tmp_path / "node.yaml"
    config.write_text(
        "dicom: {ae_title: AINODE}\n"
        "destinations:\n  pacs: {type: dimse, ae_title: PACS, host: 127.0.0.1, port: 104}\n"
        "routes:\n  - {name: all-ct, when: {tag: Modality, equals: CT}, pipelines: [lung-nodule],"
        " destinations: [pacs]}\n"
    )
    assert [r.name for r in load_config(config).routes] == ["all-ct"]
    config.write_text(config.read_text().replace("port: 104", "port: 0"))
    with pytest.raises(ConfigError, match=r"destinations\.pacs\.dimse\.port"):
        load_config(config)


def test_route_decision_log_names_the_series() -> None:
    import json

    from structlog.testing import capture_logs

    from node.route.planner import JobPlanner

    routes = [Route.model_validate({"name": "ct", "when": {"tag": "Modality", "equals": "CT"}, "pipelines": ["x"]})]
    row = {"series_uid": "1.2.3.4", "attributes": json.dumps({"Modality": "CT"}), "calling_ae": "A", "called_ae": "B"}
    with capture_logs() as logs:
        JobPlanner(routes).decide(row)  # type: ignore[arg-type]  # a mapping like the index's row
    [decision] = [e for e in logs if e["event"] == "route_decision"]
    assert decision["series_instance_uid"] == "1.2.3.4"
