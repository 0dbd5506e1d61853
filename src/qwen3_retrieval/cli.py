"""The ``qwen3-rag`` command's entry point (the console script, ``python -m qwen3_retrieval.cli``).

The command lives in :mod:`qwen3_retrieval.rag.cli`; this name stays so that both keep working.
"""

from __future__ import annotations

from qwen3_retrieval.rag.cli import build_parser, known_noise_off, main

__all__ = ["build_parser", "known_noise_off", "main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
