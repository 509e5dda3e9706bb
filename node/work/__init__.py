"""Jobs and the worker processes that run pipelines on complete series."""
