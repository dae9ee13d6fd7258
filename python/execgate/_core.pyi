"""Typed stubs for the native extension ``execgate._core``."""

from typing import Any, final

__all__ = ["Decision", "Gate", "__version__"]

__version__: str

@final
class Gate:
    """The native gate: compiled policy, evaluation and reload."""

    def __new__(
        cls,
        *,
        sources: list[tuple[str, str]] = ...,
        paths: list[str] = ...,
        data: list[dict[str, Any]] = ...,
        data_files: list[str] = ...,
        entrypoint: str = ...,
        mode: str = "enforce",
        max_instructions: int = ...,
        timeout: float = ...,
    ) -> Gate: ...
    def check(
        self,
        action: str,
        args: dict[str, Any] | None = None,
        principal: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        time: str | None = None,
    ) -> Decision: ...
    def reload(
        self,
        *,
        sources: list[tuple[str, str]] | None = None,
        paths: list[str] | None = None,
        data: list[dict[str, Any]] | None = None,
        data_files: list[str] | None = None,
    ) -> str: ...
    @property
    def policy_digest(self) -> str: ...
    @property
    def entrypoint(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def max_instructions(self) -> int: ...
    @property
    def timeout(self) -> float: ...

@final
class Decision:
    """An immutable authorization decision."""

    @property
    def allowed(self) -> bool: ...
    @property
    def blocked(self) -> bool: ...
    @property
    def mode(self) -> str: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...
    @property
    def obligations(self) -> dict[str, Any]: ...
    @property
    def input(self) -> dict[str, Any]: ...
    @property
    def action(self) -> str: ...
    @property
    def policy_digest(self) -> str: ...
    @property
    def entrypoint(self) -> str: ...
    @property
    def duration_ns(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    def to_dict(self) -> dict[str, Any]: ...
