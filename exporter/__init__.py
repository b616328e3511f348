"""m365-mail-exporter: Prometheus exporter and alerting probe for Microsoft 365 mail over OAuth2."""

__version__ = "0.1.0"
