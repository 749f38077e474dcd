"""Whether W&B has credentials, asked the way wandb itself decides it."""

from __future__ import annotations

import os

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
