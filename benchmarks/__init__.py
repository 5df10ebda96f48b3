"""Benchmarks: each answers one question with ratios measured side by side in one process.

Run them all with ``python -m benchmarks`` (or ``make bench``); one with
``python -m benchmarks fake_quantize``. Each module has ``run(tiny: bool) -> list[Result]``;
``tiny=True`` is the smoke-test size used by ``tests/test_benchmarks.py`` (no timing is
asserted anywhere in the test suite).
"""
