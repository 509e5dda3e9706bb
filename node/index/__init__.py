"""The index: the one owner of the SQLite schema, its state Enums and every query.

Stages talk to each other only through these tables (and the spool's files); each module here owns
the statements for its tables: ``series`` (studies, series, instances), ``jobs`` (jobs, job_events),
``results``, ``deliveries`` (deliveries, delivery_events) and ``queries`` (read-only views for the API,
the CLI and the demo). No SQL lives outside this package (tests/test_layering.py checks it).
"""
