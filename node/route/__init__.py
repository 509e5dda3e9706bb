"""Routing: rules on DICOM tags choose the pipelines and destinations for a complete series.

The rules are config (``node/config/routes.py``: models checked at load); ``evaluation`` applies them
to a series, ``explanation`` says why, ``planner`` turns the decision into job rows in the index.
"""
