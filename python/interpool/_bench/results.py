"""The raw samples of a run, per backend and figure, and why a figure is missing."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Results:
    """Raw samples per backend and figure, and why a figure is missing."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per-round medians of the per-call figures (warm call, payloads): their spread says how
    # steady the machine was, and the warm-call ratio is taken round by round.
    rounds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    extra: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, name: str, key: str, value: float) -> None:
        self.samples.setdefault(name, {}).setdefault(key, []).append(value)

    def skip(self, name: str, key: str, reason: str) -> None:
        self.skipped.setdefault(name, {}).setdefault(key, reason)
