"""Durable store: the spool of received files and the SQLite index every stage talks through."""
