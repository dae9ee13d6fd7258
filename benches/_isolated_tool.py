"""A trivial tool for the ``@gate.guard(isolate=...)`` round trip in bench.py:
it lives in its own module so the sandboxed child can import it."""


def echo(value: dict[str, int]) -> dict[str, int]:
    return value
