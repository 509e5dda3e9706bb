"""The harness itself: the one skip policy (CI=true fails a missing need, locally it skips), the kinds of
test, and the service not importing the demo package (the wheel does not need demo/ for `serve`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from demo.paths import REPO_ROOT
from tests import conftest

pytestmark = pytest.mark.unit

# A small suite run in-process with the repository's hooks (tests/conftest.py).
HOOKS = "from tests.conftest import pytest_collection_modifyitems, pytest_runtest_setup  # noqa: F401\n"
NEEDS_DATA = """
import pytest

@pytest.mark.needs("siemens-ct")
def test_with_data(): pass

def test_without_needs(): pass
"""


@pytest.fixture
def data_missing(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setitem(conftest.NEEDS, "siemens-ct", (lambda: False, "siemens-ct is missing (patched away)"))
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(test_policy=NEEDS_DATA)
    return pytester


def test_a_missing_need_skips_locally_with_its_reason(
    data_missing: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = data_missing.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*siemens-ct is missing (patched away)*"])


def test_with_ci_true_a_missing_need_fails_with_its_reason(
    data_missing: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = data_missing.runpytest_inprocess("-p", "no:cacheprovider", "-rfE")
    result.assert_outcomes(passed=1, errors=1)  # failed in setup: reported as an error, the run is red
    result.stdout.fnmatch_lines(["*siemens-ct is missing (patched away) (CI=true: nothing skips)*"])


def test_an_unknown_need_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(test_policy='import pytest\n\n@pytest.mark.needs("no-such-peer")\ndef test_x(): pass\n')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_a_test_without_a_kind_counts_as_unit(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(test_policy="import pytest\n\n@pytest.mark.ai\ndef test_ai(): pass\n\ndef test_plain(): pass\n")
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "-m", "unit").assert_outcomes(passed=1, deselected=1)


def test_the_service_and_its_cli_do_not_import_the_demo_package() -> None:
    probe = (
        "import sys\n"
        "import node.service, node.cli\n"
        "node.cli.build_parser()\n"
        "leaked = sorted(m for m in sys.modules if m == 'demo' or m.startswith('demo.'))\n"
        "assert not leaked, leaked\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def test_no_inference_or_service_module_computes_a_path_beside_the_repository() -> None:
    # The default data path lives in demo/paths.py; training/evaluation take --shared-ct (their default is theirs).
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for package in ("node", "pipelines")
        for path in (REPO_ROOT / package).rglob("*.py")
        if '"shared"' in path.read_text() and "training" not in path.relative_to(REPO_ROOT).parts
    ]
    assert offenders == []
