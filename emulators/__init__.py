"""Local emulators of the Google Chat and Discourse HTTP APIs, for tests, benchmarks and the demo.

They never import the bridge; the bridge never imports them (only tests, bench and `main.py demo`).
"""
