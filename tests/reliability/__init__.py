"""Reliability suite (issue 9): see docs/RELIABILITY.md."""
