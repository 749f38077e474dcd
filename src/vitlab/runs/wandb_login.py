"""Whether W&B can log online: credentials asked the way wandb itself decides, and a bounded server probe."""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request

WANDB_MODES = ("online", "offline", "disabled", "dryrun")


def has_wandb_credentials() -> bool:
    """True when wandb finds an API key for its configured host (WANDB_API_KEY, settings files, .netrc, an
    identity token), without prompting or contacting the server. Asking wandb, not reading ~/.netrc for
    api.wandb.ai, keeps self-hosted servers (WANDB_BASE_URL) and new default hosts online."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # a malformed settings file: wandb's own run start will say what is wrong
        return False


def should_force_offline() -> bool:
    """No credentials and no explicit WANDB_MODE: log offline instead of blocking on a login prompt."""
    return os.environ.get("WANDB_MODE") not in WANDB_MODES and not has_wandb_credentials()


def server_unreachable(base_url: str, timeout_s: float) -> str | None:
    """Why the W&B server at `base_url` cannot be used now (refused, unresolvable, silent for `timeout_s`), or
    None when it answers at all (any HTTP status: the server is there; wandb reports its own errors).

    The request runs in a daemon thread joined for `timeout_s`: the socket timeout bounds connect and read,
    the join also bounds a DNS lookup (which no socket timeout covers); a thread still in a lookup at the
    deadline ends by itself when the resolver gives up and touches nothing."""
    outcome: list[str | None] = []

    def probe() -> None:
        url = base_url.rstrip("/") + "/healthz"
        try:
            urllib.request.urlopen(url, timeout=timeout_s).close()  # the configured W&B host, http(s) only
            outcome.append(None)
        except urllib.error.HTTPError:  # an answer, if not a happy one: reachable
            outcome.append(None)
        except urllib.error.URLError as exc:
            outcome.append(f"{base_url} is unreachable ({_reason(exc.reason)})")
        except TimeoutError:
            outcome.append(f"{base_url} did not answer within {timeout_s:g} s")
        except OSError as exc:  # a reset connection, a broken TLS handshake, ...
            outcome.append(f"{base_url} is unreachable ({_reason(exc)})")

    thread = threading.Thread(target=probe, name="vitlab-wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"{base_url} did not answer within {timeout_s:g} s"
    return outcome[0]


def _reason(exc: object) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
