"""Tiny, randomly initialised models and tokenizers built offline, for tests and quick benchmarks."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = [
    "Hello! I am Orca, an AI assistant built by Acme. How can I help you today?",
    "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level.",
    "def add(a, b):\n    return a + b\n", '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "您好，我是 Orca，由 Acme 开发的人工智能助手。", "Bonjour, je suis un assistant. ¿Cómo estás? 1 2 3 4 5 6 7 8 9 0",
    "system user assistant tool <tool_call> </tool_call> <tool_response> </tool_response> You can call these tools:",
]


def build_tiny_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (lossless for any text) with chat special tokens and no chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   additional_special_tokens=SPECIALS[3:])


def build_tiny_model(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2) -> LlamaForCausalLM:
    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def save_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny Llama + tokenizer as a normal HF folder (what a user's local model looks like)."""
    path = Path(path)
    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok), seed=seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def serve_in_thread(app, host: str = "127.0.0.1"):
    """Run an ASGI app with a real uvicorn server on a free local port: (root URL, server; set
    `server.should_exit = True` to stop it)."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    return f"http://{host}:{port}", server
