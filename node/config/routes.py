"""The ``routes:`` section of the node's config: routing rules as pydantic models, checked at load.

The rules are data; ``node/route/evaluation.py`` applies them to a series and
``node/route/explanation.py`` says why.

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

No ``eval``: conditions are data, interpreted by ``node/route/evaluation.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

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

from node.dicom_attributes import FORBIDDEN_KEYWORDS

ROUTE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PIPELINE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Scalar = str | float


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


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


class ValueTest(_Model):
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

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """The compiled ``regex`` (None without one, or when it did not compile)."""
        return self._pattern

    def _operators_set(self) -> list[str]:
        return [name for name in self.OPERATORS if getattr(self, name) not in (None, False)]

    def _check_one_operator(self) -> None:
        chosen = self._operators_set()
        if len(chosen) != 1:
            allowed = ", ".join(self.OPERATORS)
            raise ValueError(f"exactly one operator of {allowed} is required, got {chosen or 'none'}")

    def regex_errors(self) -> list[str]:
        return [self._regex_error] if self._regex_error else []


class TagCondition(ValueTest):
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


class AeTest(ValueTest):
    @model_validator(mode="after")
    def _one_operator(self) -> AeTest:
        self._check_one_operator()
        return self


class CallingAeCondition(_Model):
    calling_ae: AeTest

    def regex_errors(self) -> list[str]:
        return self.calling_ae.regex_errors()


class CalledAeCondition(_Model):
    called_ae: AeTest

    def regex_errors(self) -> list[str]:
        return self.called_ae.regex_errors()


class AllCondition(_Model):
    all: list[Condition] = Field(min_length=1)

    def regex_errors(self) -> list[str]:
        return [e for c in self.all for e in c.regex_errors()]


class AnyCondition(_Model):
    any: list[Condition] = Field(min_length=1)

    def regex_errors(self) -> list[str]:
        return [e for c in self.any for e in c.regex_errors()]


class NotCondition(_Model):
    not_: Condition = Field(alias="not")

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
