"""Tiny random-weight models of every supported family, saved to local folders as a
user's checkpoints would be (config.json, safetensors weights, tokenizer files): no hub.

BERT-vocabulary families (BERT, DistilBERT, ELECTRA) get the packaged MiniLM tokenizer;
RoBERTa, XLM-RoBERTa and DeBERTa-v2 get a byte-level BPE tokenizer trained here on the
smoke data, with RoBERTa's special tokens and pair template (<s> A </s></s> B </s>, pad id 1,
no segment ids): a second, different tokenizer, as those families' real checkpoints have.
The decoder-only families (GPT-2, Llama with grouped-query attention, Qwen2, Mistral) get
that BPE as GPT-2's and Llama's tokenizers are: no pad token, nothing added around a text,
and no pad token id in the model's config.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from harness.config import TeacherConfig
from harness.models import load_tokenizer

SIZE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 128}
CONFIGS = {
    "bert": lambda: transformers.BertConfig(**SIZE),
    "roberta": lambda: transformers.RobertaConfig(**SIZE, type_vocab_size=1),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**SIZE, type_vocab_size=1),
    "electra": lambda: transformers.ElectraConfig(**SIZE, embedding_size=32),
    "deberta-v2": lambda: transformers.DebertaV2Config(
        **SIZE, type_vocab_size=0, relative_attention=True, position_buckets=16,
        pos_att_type=["p2c", "c2p"], position_biased_input=False),
    "distilbert": lambda: transformers.DistilBertConfig(
        dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=128),
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, n_inner=128,
                                            n_positions=128),
    # Two query heads share one key-value head.
    "llama": lambda: transformers.LlamaConfig(**SIZE, num_key_value_heads=1),
    "qwen2": lambda: transformers.Qwen2Config(**SIZE, num_key_value_heads=1),
    "mistral": lambda: transformers.MistralConfig(**SIZE, num_key_value_heads=1),
}
BPE_FAMILIES = ("roberta", "xlm-roberta", "deberta-v2")
DECODER_FAMILIES = ("gpt2", "llama", "qwen2", "mistral")


def bpe_tokenizer(texts, vocab_size: int = 800) -> transformers.PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: RoBERTa's order
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"])


def decoder_tokenizer(bpe: transformers.PreTrainedTokenizerFast
                      ) -> transformers.PreTrainedTokenizerFast:
    backend = Tokenizer.from_str(bpe.backend_tokenizer.to_str())
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"])


def save_tiny_model(model_type: str, folder: Path, bpe: transformers.PreTrainedTokenizerFast,
                    num_labels: int = 2, seed: int = 0, **sizes) -> Path:
    """A tiny ``model_type`` checkpoint with its tokenizer in ``folder``."""
    tokenizer = (decoder_tokenizer(bpe) if model_type in DECODER_FAMILIES
                 else bpe if model_type in BPE_FAMILIES else load_tokenizer(TeacherConfig()))
    config = CONFIGS[model_type]()
    for name, value in sizes.items():
        setattr(config, name, value)
    # The vocabulary as the family's own tokenizer class reads the files back: Qwen2's adds
    # its <|endoftext|> when the files lack it.
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config.vocab_size, config.num_labels = len(tokenizer), num_labels
    # Decoder-only checkpoints name no pad token in their config, whatever their tokenizer has.
    config.pad_token_id = None if model_type in DECODER_FAMILIES else tokenizer.pad_token_id
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
