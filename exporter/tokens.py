"""Token counts from the served model's own tokenizer, offline only.

Used only when the log carries text but no token ids (records are then
marked ``tokens_source: tokenizer``). ``transformers`` is imported lazily, on
the first count, so the exporter starts fast and runs without it when no
``--tokenizer`` is given. Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import os
from pathlib import Path


class TokenizerUnavailable(RuntimeError):
    pass


class TokenCounter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._tok = None

    def load(self) -> None:
        """Load now (the CLI calls this at start-up so a bad path fails early)."""
        if self._tok is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from transformers import AutoTokenizer  # heavy: only here
        except ImportError as exc:
            raise TokenizerUnavailable(
                "--tokenizer needs the 'transformers' package: "
                "pip install 'vllm-audit-exporter[tokenizer]'") from exc
        try:
            self._tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except Exception as exc:  # transformers raises many types for a bad dir
            raise TokenizerUnavailable(f"--tokenizer {self.path}: cannot load: {exc}") from exc

    def count(self, text: str, is_chat: bool) -> int | None:
        """Tokens in ``text``. A chat prompt as logged is already rendered by
        the chat template (special tokens included as text), so no extra
        special tokens are added; a completion prompt gets them as vLLM does."""
        if text is None:
            return None
        self.load()
        return len(self._tok.encode(text, add_special_tokens=not is_chat))
