"""The model shapes the benchmarks build (random weights): GPT-2 124M and the Llama-family models
people fine-tune on one GPU, from each checkpoint's config.json."""

from llama import Llama, LlamaConfig
from model import GPT, GPTConfig

GPT2_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024)
# name -> (model class, config class, config fields)
MODELS = {
    "gpt2-124m": (GPT, GPTConfig, GPT2_SHAPE),
    "smollm2-135m": (Llama, LlamaConfig, dict(
        n_layer=30, n_head=9, n_kv_head=3, n_embd=576, intermediate_size=1536, vocab_size=49152,
        block_size=8192, rope_theta=100000.0, tie_embeddings=True)),
    "smollm2-360m": (Llama, LlamaConfig, dict(
        n_layer=32, n_head=15, n_kv_head=5, n_embd=960, intermediate_size=2560, vocab_size=49152,
        block_size=8192, rope_theta=100000.0, tie_embeddings=True)),
    "qwen2.5-0.5b": (Llama, LlamaConfig, dict(
        n_layer=24, n_head=14, n_kv_head=2, n_embd=896, intermediate_size=4864, vocab_size=151936,
        block_size=32768, rope_theta=1000000.0, tie_embeddings=True, qkv_bias=True)),
}
# --quick: a tiny model of the same architecture
QUICK = {GPT: dict(n_layer=2, n_head=2, n_embd=64, vocab_size=300, block_size=64),
         Llama: dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=96,
                     vocab_size=300, block_size=64)}


def build(name, quick=False):
    """(model, config fields) for MODELS[name], or its tiny version with quick."""
    model_class, config_class, shape = MODELS[name]
    shape = QUICK[model_class] if quick else shape
    return model_class(config_class(**shape)), shape

