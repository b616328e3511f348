"""Grafana dashboards as code (grafana-foundation-sdk).

`python -m grafana.generate` writes grafana/dashboards/*.json.
"""
