"""`ainode process --dicomweb URL --study UID`: pull a study by WADO-RS into the node (e.g. a
radiologist asks for a run on an old study). It enters the same durable store as C-STORE and
STOW-RS; the running node then completes, routes and processes it like any other study."""

from __future__ import annotations

import argparse
import io
import sys

from node.cli.serve_cmd import add_config_arguments, config_from_args
from node.errors import ConfigError, NodeError

PULL_CALLING_AE = "WADO-RS"


def _process(args: argparse.Namespace) -> int:
    import requests
    from dicomweb_client.api import DICOMwebClient

    from node.store.ingest import InstanceStore
    from node.store.spool import Spool
    from node.uids import validate_uid
    from node.work.worker import open_configured_index

    try:
        config = config_from_args(args)
        study_uid = validate_uid(args.study, "--study")
    except (ConfigError, NodeError) as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 2
    client = DICOMwebClient(url=args.dicomweb)
    try:
        datasets = client.retrieve_study(study_uid)
    except requests.RequestException as exc:
        print(f"ainode: WADO-RS retrieve from {args.dicomweb} failed: {exc}", file=sys.stderr)
        return 1
    store = InstanceStore(
        open_configured_index(config), Spool(config.storage.data_dir), config.storage.min_free_disk_mb * 1024 * 1024
    )
    stored, failed = 0, 0
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        try:
            store.store_part10(buffer.getvalue(), calling_ae=PULL_CALLING_AE, called_ae=config.dicom.ae_title)
            stored += 1
        except NodeError as exc:
            failed += 1
            print(f"  instance refused: {exc}", file=sys.stderr)
    store.flush()
    store.close()
    print(
        f"study {study_uid}: {stored} instance(s) stored in {config.storage.data_dir}"
        + (f", {failed} refused" if failed else "")
        + "; the running node will complete and process it"
    )
    return 0 if stored and not failed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("process", help="pull a study by WADO-RS (DICOMweb) and process it like a received one")
    add_config_arguments(p)
    p.add_argument("--dicomweb", required=True, metavar="URL", help="DICOMweb root, e.g. http://pacs/dicom-web")
    p.add_argument("--study", required=True, metavar="UID", help="StudyInstanceUID to fetch")
    p.set_defaults(func=_process)
