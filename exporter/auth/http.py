"""The HTTP client MSAL uses: explicit TLS trust, explicit proxy, always a timeout.

Why our own client: MSAL's default `requests` session honours REQUESTS_CA_BUNDLE and
CURL_CA_BUNDLE, which silently override its `verify=` (so a configured CA could be
ignored), and it has no timeout by default (a hung identity platform would hang a probe
thread forever). This session ignores the environment (`trust_env=False`), verifies against
the configured CA bundle or the default trust store, and always applies a timeout.

It also observes every response: the last HTTP status and Retry-After (which MSAL does not
return in its result dict) and a count of token-endpoint requests, exported as
`m365_token_requests_total` and used by the single-flight test and the benchmark.

With `defaults.dns.resolvers` set, host names are resolved through those servers
(`resolving.py`), like the DNS check and the mail probes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import requests


class MsalHttpClient:
    def __init__(self, ca_file: Path | None, proxy: str | None, timeout: float,
                 resolvers: tuple[str, ...] = ()) -> None:
        self.session = requests.Session()
        self.session.trust_env = False
        if resolvers:  # the same resolvers as the DNS check and the mail probes (resolving.py)
            from .resolving import ResolvingAdapter

            adapter = ResolvingAdapter(tuple(resolvers), timeout)
            self.session.mount("https://", adapter)
            self.session.mount("http://", adapter)
        self.session.verify = str(ca_file) if ca_file else True
        if proxy:
            self.session.proxies = {"https": proxy, "http": proxy}
        self.timeout = timeout
        self._lock = threading.Lock()
        self.token_requests = 0
        self.last_status: int | None = None
        self.last_retry_after: float | None = None
        self.last_content_type: str | None = None  # a 200 text/html is a portal or proxy, not Entra

    def _observe(self, url: str, method: str, resp: requests.Response) -> requests.Response:
        with self._lock:
            if method == "POST" and url.rstrip("/").endswith("/token"):
                self.token_requests += 1
            self.last_status = resp.status_code
            self.last_content_type = resp.headers.get("Content-Type")
            ra = resp.headers.get("Retry-After")
            try:
                self.last_retry_after = float(ra) if ra is not None else None
            except ValueError:
                self.last_retry_after = None
        return resp

    def post(self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        kwargs.pop("timeout", None)
        resp = self.session.post(url, params=params, data=data, headers=headers, timeout=self.timeout, **kwargs)
        return self._observe(url, "POST", resp)

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        kwargs.pop("timeout", None)
        resp = self.session.get(url, params=params, headers=headers, timeout=self.timeout, **kwargs)
        return self._observe(url, "GET", resp)

    def reset_observation(self) -> None:
        with self._lock:
            self.last_status = None
            self.last_retry_after = None
            self.last_content_type = None

    def close(self) -> None:
        self.session.close()
