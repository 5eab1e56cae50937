"""hooks.py keeps working as the pipeline changes: every variant hooks.sh accepts runs a few calls."""

from __future__ import annotations

import pytest

from bench.interceptors import hooks


@pytest.mark.parametrize("variant", ["handler", "noop", "full", "AccessLog", "-AccessLog"])
def test_variant_runs(variant: str) -> None:
    assert hooks.main(["--calls", "5", "--", variant]) == 0


def test_variants_pick_the_named_middleware() -> None:
    assert hooks.middleware("handler") is None
    assert [type(m).__name__ for m in hooks.middleware("ServerMetrics")] == ["ServerMetrics"]
    full = [type(m).__name__ for m in hooks.middleware("full")]
    assert [type(m).__name__ for m in hooks.middleware("-Tracing")] == [n for n in full if n != "Tracing"]
