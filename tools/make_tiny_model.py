"""Build a tiny random-weight Llama model and tokenizer for running a real vLLM offline.

Usage: python tools/make_tiny_model.py [OUTDIR]   (run it with the vLLM venv's python)

Rules:
- Deterministic: fixed seed, fixed built-in corpus, so two builds give the same
  tokenizer and the same weights.
- Offline: nothing is downloaded.
- Idempotent: when OUTDIR already holds a complete model (every file in
  ``REQUIRED_FILES``), nothing is written.
- Shape: Llama, hidden 128, 2 heads (head_dim 64; vLLM's CPU attention needs
  head_dim >= 32), 2 layers, float32, 1024 positions, byte-level BPE vocab of
  ``VOCAB_SIZE`` trained on a corpus that includes CJK so CJK prompts tokenize
  into real merges rather than only raw bytes.
- Default OUTDIR: ``${VLLM_AUDIT_CACHE:-$HOME/.cache/vllm-audit}/tiny-llama``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 448
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# ChatML-like template; add_generation_prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Hello, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Please summarise the following document in three sentences.",
    "You are a helpful assistant. Answer briefly and politely.",
    "def add(a, b):\n    return a + b\n",
    '{"name": "alice", "role": "admin", "count": 3, "ok": true}',
    "Error: request rejected because the prompt is too long.",
    "INFO 11-22 10:00:00 [request_logger.py:65] Received request",
    "The weather in Paris is sunny; the weather in Berlin is rainy.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2026",
    "你好，世界。今天天气很好。我们去公园散步吧。",
    "请用中文回答下面的问题：什么是机器学习？",
    "こんにちは、世界。今日はいい天気ですね。",
    "日本語のテキストも少し含めます。東京、大阪、京都。",
    "안녕하세요, 세계. 오늘 날씨가 좋네요.",
    "Audit log: user o'brien sent \"x\" {y} at noon.",
]


def default_outdir() -> Path:
    root = os.environ.get("VLLM_AUDIT_CACHE") or str(Path.home() / ".cache" / "vllm-audit")
    return Path(root) / "tiny-llama"


def is_complete(outdir: Path) -> bool:
    return all((outdir / name).is_file() for name in REQUIRED_FILES)


def build_tokenizer():
    """Train the byte-level BPE tokenizer and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so merges are stable and cover the CJK lines.
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token=EOS_TOKEN,
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


def build_model(vocab_size: int, eos_id: int, bos_id: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=bos_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    return LlamaForCausalLM(config).to(torch.float32)


def make(outdir: Path) -> bool:
    """Write the model into outdir; return False when it was already complete."""
    if is_complete(outdir):
        return False
    import shutil

    # Build beside the target and rename, so a crash never leaves a half model
    # that the completeness check would accept.
    tmp = outdir.with_name(outdir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    bos_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = build_model(len(tokenizer), eos_id, bos_id)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.bos_token_id = bos_id
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(outdir, ignore_errors=True)
    tmp.rename(outdir)
    return True


def main(argv: list[str]) -> int:
    outdir = Path(argv[1]) if len(argv) > 1 else default_outdir()
    made = make(outdir)
    print(("built " if made else "already complete: ") + str(outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
