"""Third-party chatter is silenced; vitlab's own warnings and Lightning's warnings about the run stay."""

from __future__ import annotations

import logging
import warnings

import pytest

from vitlab.training.quiet import quiet_third_party


def _shown(category: type[Warning], module: str, message: str = "x") -> bool:
    with warnings.catch_warnings(record=True) as caught:
        quiet_third_party()
        warnings.warn_explicit(message, category, filename=f"{module}.py", lineno=1, module=module)
    return bool(caught)


def test_deprecations_from_libraries_go_and_vitlabs_own_stay() -> None:
    assert not _shown(DeprecationWarning, "pytorch_lightning.utilities._pytree")
    assert not _shown(FutureWarning, "timm.models")
    assert _shown(DeprecationWarning, "vitlab.models.backbone")
    assert _shown(UserWarning, "vitlab.training.module")
    assert _shown(UserWarning, "pytorch_lightning.loops.fit_loop", "The number of training batches (5) is smaller")
    assert not _shown(UserWarning, "lightning_fabric.plugins", "The `srun` command is available on your system")


def test_lightning_chatter_is_dropped_and_its_real_messages_kept(caplog: pytest.LogCaptureFixture) -> None:
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert len(rank_zero.filters) == 1
    with caplog.at_level(logging.INFO):
        rank_zero.info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        rank_zero.info("GPU available: False, used: False")
        rank_zero.info("`Trainer.fit` stopped: `max_epochs=3` reached.")
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_epochs=3` reached."]
