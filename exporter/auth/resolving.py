"""A `requests` adapter whose connections resolve host names through `dns.resolvers`.

Why: with `defaults.dns.resolvers` set, the DNS check asks those servers, and so must every
connection the exporter makes, or the check and the token request it explains could ask
different servers. urllib3 connects to `_dns_host` but verifies TLS (SNI and certificate)
against `host`; we resolve `_dns_host` ourselves and connect to the address, so certificate
verification against the host name is unchanged. Through a proxy, only the proxy's own name is
resolved here (the proxy resolves the target, as with any CONNECT proxy).
"""

from __future__ import annotations

import socket
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError

from ..resolvers import resolve_sync

MAX_ADDRESSES = 4


def _resolving(base: type[HTTPConnection], resolvers: tuple[str, ...], timeout: float) -> type[HTTPConnection]:
    class ResolvingConnection(base):  # type: ignore[misc, valid-type]
        def _new_conn(self) -> socket.socket:
            name = self._dns_host
            try:
                addresses = resolve_sync(name, resolvers, timeout)
            except socket.gaierror as exc:
                raise NameResolutionError(name, self, exc) from exc
            last: Exception | None = None
            for _family, ip in addresses[:MAX_ADDRESSES]:
                self._dns_host = ip
                try:
                    return super()._new_conn()  # type: ignore[no-any-return]
                except NewConnectionError as exc:  # refused/unreachable: try the next address
                    last = exc
                finally:
                    self._dns_host = name
            assert last is not None
            raise last

    return ResolvingConnection


class ResolvingAdapter(HTTPAdapter):
    def __init__(self, resolvers: tuple[str, ...], timeout: float) -> None:
        http = type("ResolvingHTTPPool", (HTTPConnectionPool,),
                    {"ConnectionCls": _resolving(HTTPConnection, resolvers, timeout)})
        https = type("ResolvingHTTPSPool", (HTTPSConnectionPool,),
                     {"ConnectionCls": _resolving(HTTPSConnection, resolvers, timeout)})
        self._pool_classes = {"http": http, "https": https}
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = self._pool_classes
        return manager
