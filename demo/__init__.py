"""The demo site and the harness the tests and benchmarks share; not part of the service.

`ainode demo` imports it lazily; `ainode serve` never does. What is here:

- ``demo.site``: ``ainode demo`` (a local Orthanc auto-routing to the node, one CT through both)
- ``demo.local_pacs``: the local Orthanc (the demo's PACS, the tests' peer)
- ``demo.node_process``: the node as a real process (``python -m node serve``)
- ``demo.dcmtk``: DCMTK's command-line peers (the Debian binaries)
- ``demo.netutil``: ports, deadlines, stopping processes
- ``demo.ct_factory``: every generated CT series (tests, demo, benchmarks)
- ``demo.paths``: where the real CT data is expected (``../shared/data`` beside the repository)
"""
