"""The transport client for each configured destination (one module per transport type)."""

from __future__ import annotations

from node.config.destinations import DestinationConfig, DimseDestinationConfig, StowRsDestinationConfig
from node.export.destinations import Destination


def build_destination(name: str, config: DestinationConfig) -> Destination:
    """The transport client for one configured destination."""
    # Imported here so that building one kind of client does not pull in the others' libraries.
    if isinstance(config, DimseDestinationConfig):
        from node.export.dimse import DimseDestination

        return DimseDestination(name, config)
    if isinstance(config, StowRsDestinationConfig):
        from node.export.stowrs import StowRsDestination

        return StowRsDestination(name, config)
    from node.export.orthanc_rest import OrthancRestDestination

    return OrthancRestDestination(name, config)


def build_destinations(configs: dict[str, DestinationConfig]) -> dict[str, Destination]:
    return {name: build_destination(name, cfg) for name, cfg in configs.items()}
