"""The HTTP operations surface: health, metrics, JSON API, STOW-RS ingest and the worklist page."""
