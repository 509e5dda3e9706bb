"""AI pipelines: CT volume in, findings out. See :mod:`pipelines.base` for the contract."""
