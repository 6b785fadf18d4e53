"""The request service: one place that runs a call end to end (see ``calls.py``)."""
