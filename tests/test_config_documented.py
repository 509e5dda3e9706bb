"""The shipped example config documents every key of the config model, and its example route runs the
lung-nodule pipeline on the shared 5 mm chest CT (the data the README demos)."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from demo.node_process import REPO_ROOT
from node.config import NodeConfig, configuration_warnings, load_config
from node.config.destinations import DimseDestinationConfig, OrthancRestDestinationConfig, StowRsDestinationConfig

EXAMPLE = REPO_ROOT / "conf" / "node.yaml"


def _models(annotation: object) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        elif typing.get_args(arg):
            found += _models(arg)
    return found


def _all_keys() -> dict[str, str]:
    """Every field of every model reachable from NodeConfig: {key: model that has it}."""
    keys: dict[str, str] = {}
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [NodeConfig, DimseDestinationConfig, StowRsDestinationConfig,
                                   OrthancRestDestinationConfig]  # fmt: skip
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            keys.setdefault(field.alias or name, model.__name__)
            todo += _models(field.annotation)
    return keys


def test_every_config_key_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    missing = {
        key: model
        for key, model in _all_keys().items()
        if not re.search(rf"(^|[\s{{,#-]){re.escape(key)}:", text, re.MULTILINE)
    }
    assert not missing, f"keys of the config model not in conf/node.yaml: {missing}"


def test_example_route_sends_the_shared_5mm_chest_ct_to_lung_nodule() -> None:
    ct = REPO_ROOT.parent / "shared" / "data" / "ct" / "philips-chest-64" / "dicom"
    done = subprocess.run(
        [sys.executable, "-m", "node", "route-test", str(ct), "--config", str(EXAMPLE), "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"lung-nodule": [\n' in done.stdout and '"pacs"' in done.stdout, done.stdout
    assert not configuration_warnings(load_config(EXAMPLE))


def test_route_test_and_serve_agree_without_routes_and_both_warn(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        "dicom:\n  allowed_callers: [{ae_title: PACS}]\n"
        "destinations:\n  pacs: {type: dimse, ae_title: PACS, host: 127.0.0.1, port: 4242}\n"
    )
    ct = REPO_ROOT.parent / "shared" / "data" / "ct" / "philips-chest-64" / "dicom"
    done = subprocess.run(
        [sys.executable, "-m", "node", "route-test", str(ct), "--config", str(config), "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"ct-lung-nodule"' in done.stdout  # the default route serve runs, not "no route matched"
    assert "names no destination" in done.stderr
    checked = subprocess.run([sys.executable, "-m", "node", "check-config", str(config)],
                             capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)  # fmt: skip
    assert checked.returncode == 0 and "names no destination" in checked.stderr


def test_check_config_is_loud_about_zero_allowed_callers(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("dicom:\n  ae_title: AINODE\n")
    checked = subprocess.run([sys.executable, "-m", "node", "check-config", str(config)],
                             capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)  # fmt: skip
    assert checked.returncode == 1
    assert "allowed_callers is empty" in checked.stderr and "refuses every DICOM caller" in checked.stderr


def test_relative_data_dir_is_the_config_files_folder(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "node.yaml").write_text("storage:\n  data_dir: data\n")
    assert load_config(site / "node.yaml").storage.data_dir == site.resolve() / "data"
    (site / "default.yaml").write_text("logging: {level: INFO}\n")
    assert load_config(site / "default.yaml").storage.data_dir == site.resolve() / "ainode-data"
    assert load_config(site / "node.yaml", {"storage": {"data_dir": "/x/y"}}).storage.data_dir == Path("/x/y")


def test_a_bad_superseded_policy_stops_start_up_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        "dicom:\n  allowed_callers: [{ae_title: PACS}]\n"
        "destinations:\n  pacs: {type: dimse, ae_title: PACS, host: 127.0.0.1, port: 4242, superseded: delete}\n"
    )
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        done = subprocess.run([sys.executable, "-m", "node", *command],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)  # fmt: skip
        assert done.returncode != 0
        assert "destinations.pacs.dimse.superseded" in done.stderr and "orthanc-rest" in done.stderr, done.stderr
