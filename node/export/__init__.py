"""Export: deliver result objects (SEG, SR, Secondary Captures) to configured destinations.

``destinations`` holds the config models, the common interface and the factory; one module per
transport (``dimse``, ``stowrs``, ``orthanc_rest``) does the talking; ``backoff`` computes the
retry schedule the outbox follows for transient failures.
"""
