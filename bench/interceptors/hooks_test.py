"""hooks.py keeps working as the pipeline changes: every variant hooks.sh accepts runs a few calls."""

from __future__ import annotations

import pytest

from bench.interceptors import hooks


@pytest.mark.parametrize("variant", ["handler", "noop", "full", "AccessLog", "-AccessLog"])
def test_variant_runs(variant: str) -> None:
    assert hooks.main(["--calls", "5", "--", variant]) == 0


def test_variants_pick_the_named_middleware() -> None:
    assert hooks.middleware("handler") is None
    assert names("ServerMetrics") == ["ServerMetrics"]
    assert names("-Tracing") == [name for name in names("full") if name != "Tracing"]


def names(variant: str) -> list[str]:
    stack = hooks.middleware(variant)
    assert stack is not None, variant
    return [type(m).__name__ for m in stack]
