"""The WebRTC test modules' network isolation: import :func:`isolated_network` to run a module's
tests in a loopback-only network namespace (:func:`runtime.loopback.loopback_netns`)."""
from __future__ import annotations

import pytest

from runtime.loopback import loopback_netns

__all__ = ["isolated_network"]


@pytest.fixture(scope="module", autouse=True)
def isolated_network():
    """Module-wide: run the module's tests in the loopback-only namespace (import it to use it)."""
    with loopback_netns():
        yield
