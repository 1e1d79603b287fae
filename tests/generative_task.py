"""A synthetic generative task whose answer is a function of the prompt: reverse a string
of four digits ("3 1 4 1 =" -> "1 4 1 3"), with a word-level tokenizer of 14 tokens, and
tiny random-weight causal LMs and T5 encoder-decoders built from their config classes.
No hub."""

from __future__ import annotations

import random

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

TOKENS = ["<pad>", "</s>", "<s>", "="] + [str(digit) for digit in range(10)]


def digit_tokenizer() -> transformers.PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                                eos_token="</s>", bos_token="<s>")


def reversal_examples(n: int, seed: int, digits: int = 4) -> tuple[list[str], list[str]]:
    generator = random.Random(seed)
    prompts, targets = [], []
    for _ in range(n):
        drawn = [str(generator.randrange(10)) for _ in range(digits)]
        prompts.append(" ".join(drawn) + " =")
        targets.append(" ".join(reversed(drawn)))
    return prompts, targets


def tiny_lm(family: str, layers: int, hidden: int, heads: int, seed: int = 0,
            key_value_heads: int | None = None) -> transformers.PreTrainedModel:
    ids = {"vocab_size": len(TOKENS), "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if family == "gpt2":
        config = transformers.GPT2Config(n_positions=32, n_embd=hidden, n_layer=layers,
                                         n_head=heads, n_inner=4 * hidden, **ids)
    else:
        config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family](
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=key_value_heads or heads, intermediate_size=4 * hidden,
            max_position_embeddings=32, **ids)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def tiny_t5(layers: int, hidden: int, heads: int, seed: int = 0) -> transformers.PreTrainedModel:
    """T5 v1.1's layout (a gated FFN; ``tie_word_embeddings=False``: no rescaled decoder
    output, though transformers 5 ties the output layer anyway), the decoder started by pad."""
    config = transformers.T5Config(
        vocab_size=len(TOKENS), d_model=hidden, d_kv=hidden // heads, d_ff=4 * hidden,
        num_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)
    torch.manual_seed(seed)
    return transformers.AutoModelForSeq2SeqLM.from_config(config)
