"""Tiny local models, tokenizers and scripted reasoning traces for the tests, benchmarks and examples' smoke runs.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in memory on the scripted traces, the
model is a randomly initialised Llama of a few thousand parameters.
"""

from __future__ import annotations

import random

LETTERS = "ABCDE"
_WORDS = (
    "the patient has fever cough pain fatigue rash swelling and blood pressure is high low normal so we consider "
    "infection inflammation heart lung liver kidney brain therapy dose drug test result sign symptom likely unlikely "
    "because therefore first next then finally"
).split()
_ORGANS = ["heart", "lung", "liver", "kidney", "brain"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% if m['role'] != 'assistant' or not loop.last %}"
    "<|end|>{% else %}<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def scripted_examples(n: int, seed: int = 0, n_options: int = 4) -> list[dict]:
    """``n`` multiple-choice questions with step-by-step traces: ``question``, ``options``, ``answer``,
    ``reasoning`` (steps separated by blank lines) and ``prompt`` / ``completion`` texts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        organs = rng.sample(_ORGANS, n_options)
        answer = rng.randrange(n_options)
        question = f"Question {i}: which organ is affected when the patient has {rng.choice(_WORDS)}?"
        options = {LETTERS[j]: organs[j] for j in range(n_options)}
        opts = " ".join(f"{k}) {v}" for k, v in options.items())
        steps = [
            " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 7))) + "." for _ in range(rng.randint(1, 4))
        ]
        steps.append(f"so the {organs[answer]} is likely.")
        reasoning = "\n\n".join(steps)
        prompt = f"{question}\nOptions: {opts}\nThink step by step."
        completion = f"{reasoning}\nThe answer is {LETTERS[answer]}."
        out.append(
            {
                "question": question,
                "options": options,
                "answer": LETTERS[answer],
                "answer_idx": LETTERS[answer],
                "reasoning": reasoning,
                "prompt": prompt,
                "completion": completion,
            }
        )
    return out


def tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on the scripted traces, with a chat template and pad/eos tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [ex["prompt"] + "\n" + ex["completion"] for ex in scripted_examples(300, seed=123)]
    corpus += ["\n\n", " A", " B", " C", " D", " E", "\nThe answer is"] * 20
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(tokenizer, seed: int = 0, hidden_size: int = 32, num_layers: int = 2, attn: str = "sdpa"):
    """A random Llama causal LM sized for tests (fp32, eos/pad taken from ``tokenizer``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pretrain_on_traces(model, tokenizer, steps: int = 300, batch_size: int = 16, lr: float = 3e-3, seed: int = 5):
    """Teach a tiny model the trace format (steps separated by blank lines, then "The answer is X.", then EOS), so
    that its own generations have steps and answers. About 10 s on two CPU cores."""
    import torch

    torch.manual_seed(seed)
    texts = [
        tokenizer(e["prompt"])["input_ids"]
        + tokenizer(e["completion"], add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
        for e in scripted_examples(400, seed=seed)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = [texts[(step * batch_size + i) % len(texts)] for i in range(batch_size)]
        length = max(map(len, batch))
        ids = torch.full((batch_size, length), tokenizer.pad_token_id)
        mask = torch.zeros(batch_size, length, dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, : len(b)] = torch.tensor(b)
            mask[i, : len(b)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


def save_trained_tiny_model(path: str, steps: int = 300) -> str:
    """Write a tokenizer and a tiny model pre-trained on the scripted traces to ``path``; return ``path``."""
    tokenizer = tiny_tokenizer()
    model = pretrain_on_traces(tiny_model(tokenizer, hidden_size=64, num_layers=2), tokenizer, steps=steps)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
