"""`--config.check`'s look at the host: the files, variables and directories a config names.

Why check-only (not a load error, so not on reload): secret/certificate files and token
caches are often provisioned after the exporter starts or rotated while it runs (Kubernetes
secret volumes, Vault agent, `login` creating the cache); one missing file must not stop the
monitoring of every other mailbox. At run time the token probe reports it per credential as
`credential_unreadable` / `no_token_cache` with a fix. `--config.check` (run before a deploy
or a reload) finds all of them in one pass instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Config, TLSSettings


def _file_problem(path: Path) -> str | None:
    try:
        if path.is_dir():
            return "is a directory"
        with open(path, "rb") as fh:
            if not fh.read(1):
                return "is empty"
    except FileNotFoundError:
        return "does not exist"
    except PermissionError:
        return "is not readable by this user"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return None


def environment_problems(cfg: Config) -> list[str]:
    """Every named file, variable and directory that cannot work, as `field: path: problem`."""
    out: list[str] = []

    def file(field: str, path: Path | None) -> None:
        if path is not None and (problem := _file_problem(Path(path))) is not None:
            out.append(f"{field}: {path}: {problem}")

    def tls(field: str, t: TLSSettings | None) -> None:
        if t is not None:
            file(field + ".ca_file", t.ca_file)

    for name, c in cfg.credentials.items():
        base = f"credentials.{name}"
        file(base + ".client_secret_file", c.client_secret_file)
        file(base + ".certificate_file", c.certificate_file)
        file(base + ".private_key_file", c.private_key_file)
        for field in ("client_secret_env", "private_key_password_env"):
            var = getattr(c, field)
            if var is not None and not os.environ.get(var, "").strip():
                out.append(f"{base}.{field}: environment variable {var} is unset or empty")
        if c.token_cache is not None:
            parent = Path(c.token_cache).parent
            if not parent.is_dir():
                out.append(f"{base}.token_cache: directory {parent} does not exist")
            elif not os.access(parent, os.W_OK | os.X_OK):
                out.append(f"{base}.token_cache: directory {parent} is not writable by this user")
    d = cfg.defaults
    tls("defaults.tls", d.tls)
    file("defaults.https.ca_file", d.https.ca_file)
    for check in ("imap", "pop3", "smtp"):
        tls(f"defaults.endpoints.{check}.tls", getattr(d.endpoints, check).tls)
    for i, m in enumerate(cfg.mailboxes):
        for check in ("imap", "pop3", "smtp"):
            tls(f"mailboxes[{i}].endpoints.{check}.tls", getattr(m.endpoints, check).tls)
    return out
