"""The demo's LLM pretraining: each scene description encoded once for all its targets, same loss as one
text per target."""
import jax

from xformer_jax import losses
from xformer_jax.data import bpe
from xformer_jax.data.tokenizers import LLMTokenizer
from xformer_jax.models import opt
from xformer_jax.proj.synthetic import parts, pretrain

PAIRS = [  # (description, target): two descriptions of different lengths, with 3 and 1 targets
    ("three red circles at the top left", "a photo of three red circles"),
    ("three red circles at the top left", "Question: Is there a red circle? Short answer: yes"),
    ("one blue square at the bottom right and two green triangles at the top",
     "Question: How many triangles? Short answer: 2"),
    ("three red circles at the top left", "Question: Which color are the circles? Short answer: red"),
]


def test_shared_contexts_give_the_loss_of_one_text_per_target(tmp_path):
    tokenizer = LLMTokenizer(bpe.train_bpe([t for pair in PAIRS for t in pair], str(tmp_path / "bpe.json"), 300))
    llm = opt.OPTForCausalLM(opt.OPTConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                           num_attention_heads=4, max_position_embeddings=128))
    texts = parts.encode_texts(tokenizer, PAIRS)
    params = llm.init(jax.random.key(0), input_ids=texts["input_ids"], attention_mask=texts["attention_mask"])["params"]
    logits = llm.apply({"params": params}, input_ids=texts["input_ids"], attention_mask=texts["attention_mask"])["logits"]
    expected = float(losses.lm_loss(logits, texts["labels"]))
    targets = [tokenizer.encode(f"{t}\n") for _, t in PAIRS]  # the labels: each target and its newline only
    assert [row[row != losses.IGNORE_INDEX].tolist() for row in texts["labels"]] == targets

    shared = parts.encode_shared_contexts(tokenizer, PAIRS, targets_per_context=2)
    contexts, per_context = shared["target_ids"].shape[:2]
    assert (contexts, per_context) == (3, 2)  # the first description's 3 targets in two rows of contexts
    assert shared["target_mask"][1:, 1:].sum() == 0  # the short group's padded rows: no tokens, no labels
    assert (shared["target_labels"][1:, 1:] == losses.IGNORE_INDEX).all()
    batch = parts.shared_context_batch(shared, range(contexts))
    assert batch["context_of"].tolist() == [0, 0, 1, 1, 2, 2]
    got = float(losses.lm_loss(pretrain.shared_context_logits(llm, params, batch), batch["target_labels"]))
    assert abs(got - expected) < 1e-5, (got, expected)  # float32; measured 0.0 on CPU
