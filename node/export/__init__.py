"""Export: deliver result objects (SEG, SR, Secondary Captures) to configured destinations.

``destinations`` holds the common interface and its outcome types (the config models are in
``node/config/destinations.py``); ``transports`` builds the client for each configured destination,
one module per transport (``dimse``, ``stowrs``, ``orthanc_rest``) does the talking; ``backoff``
computes the retry schedule the outbox follows for transient failures; ``outbox`` drives the rows.
"""
