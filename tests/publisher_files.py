"""Tiny files laid out exactly as their publishers ship them, for the tests of what users feed in:
facebook/opt-*'s tokenizer (vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, no
tokenizer.json) and PyTorch weights as the older hub repositories hold them (pytorch_model.bin, sharded with
pytorch_model.bin.index.json; facebook/opt-* with the bare OPTModel's `decoder.*` keys)."""
import json
import os

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from xformer_jax.data import bpe


def opt_tokenizer(directory, texts, vocab_size: int = 400) -> str:
    """A byte-level BPE trained on `texts` (OPT's special tokens <s> 0, <pad> 1, </s> 2, <unk> 3), written as
    the facebook/opt-* repositories ship theirs: GPT2Tokenizer files, bos = eos = unk = </s>, pad <pad>."""
    os.makedirs(directory, exist_ok=True)
    trained = bpe.train_bpe(texts, os.path.join(directory, "bpe.json"), vocab_size)
    Tokenizer.from_file(trained).model.save(str(directory))  # vocab.json + merges.txt
    os.remove(trained)
    settings = {"add_bos_token": True, "add_prefix_space": False, "bos_token": "</s>", "eos_token": "</s>",
                "errors": "replace", "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>",
                "tokenizer_class": "GPT2Tokenizer", "unk_token": "</s>"}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(settings, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "</s>"}, f, indent=2)
    return str(directory)


def torch_checkpoint(model, directory, *, bare_base_model: bool = False, shards: int = 1,
                     legacy_layer_norm: bool = False) -> str:
    """config.json + the state dict as torch.save wrote it for transformers 4.x's save_pretrained with
    safe_serialization=False: one pytorch_model.bin, or `shards` pytorch_model-0000k-of-0000n.bin files and
    their index. `bare_base_model`: the keys of the model's base model without its prefix and no LM head
    (facebook/opt-*); `legacy_layer_norm`: LayerNorm gamma / beta (the original bert-base-uncased)."""
    # save_pretrained writes the checkpoint names (transformers 5 renames some modules in memory), then
    # its safetensors file becomes the pickle.
    model.save_pretrained(str(directory))
    state = load_file(os.path.join(directory, "model.safetensors"))
    os.remove(os.path.join(directory, "model.safetensors"))
    if bare_base_model:
        prefix = model.base_model_prefix + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if legacy_layer_norm:
        state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in state.items()}
    if shards == 1:
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
        return str(directory)
    names = sorted(state)
    weight_map = {}
    for k in range(shards):
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[k::shards]}
        torch.save(part, os.path.join(directory, file))
        weight_map.update({n: file for n in part})
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                   "weight_map": weight_map}, f, indent=2)
    return str(directory)


# ------------------------------------------------------------------------------------------------
# Datasets as their publishers ship them (docs/reproduce.md's $DATA tree)
# ------------------------------------------------------------------------------------------------
COCO_TRAIN_IDS, COCO_VAL_IDS, COCO_TEST_IDS = (9, 25, 30, 34, 36, 42), (73, 74, 77), (1, 16)
VG_IDS = (1, 2, 3, 4)
WORDS = ("red", "blue", "green", "dog", "cat", "table", "two", "small", "on", "the")
GQA_IMAGES = ("n161313", "n235859")


def _jpeg(path, seed: int, size=(40, 30)) -> None:
    """A small random-colour JPEG, wider than tall (resizing must handle any shape)."""
    import numpy as np
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def _json(path, value) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)
    return str(path)


def _caption(seed: int) -> str:
    import numpy as np
    return "a " + " ".join(np.random.default_rng(seed).choice(WORDS, 5)) + "."


def coco_name(split: str, image_id: int) -> str:
    return f"{split}/COCO_{split}_{image_id:012d}.jpg"


def _answers(answer: str, humans: int, other: str = "yes") -> list:
    """VQA's 10 human answers: `humans` of them `answer`, the rest `other`."""
    return [{"answer": answer if i < humans else other, "answer_confidence": "yes", "answer_id": i + 1}
            for i in range(10)]


def datasets(root) -> dict:
    """The $DATA tree of docs/reproduce.md, tiny: COCO images (train2014 / val2014 / test2015 JPEGs), LAVIS's
    COCO Karpathy caption JSONs (train; val / test with five captions; the test split's COCO-format ground
    truth), Visual Genome's images with LAVIS's vg_caption.json, the official VQAv2 (val2014 and test-dev2015)
    and OK-VQA questions and annotations files, and GQA's testdev balanced questions with its images.
    Returns {name: path}."""
    root = str(root)
    coco, vg = os.path.join(root, "coco"), os.path.join(root, "vg")
    seed = iter(range(10_000))
    for split, ids in (("train2014", COCO_TRAIN_IDS), ("val2014", COCO_VAL_IDS), ("test2015", COCO_TEST_IDS)):
        for image_id in ids:
            _jpeg(os.path.join(coco, "images", coco_name(split, image_id)), next(seed))
    for image_id in VG_IDS:
        _jpeg(os.path.join(vg, "images", f"VG_100K/{image_id}.jpg"), next(seed))
    for image_id in GQA_IMAGES:
        _jpeg(os.path.join(root, "gqa", "images", f"{image_id}.jpg"), next(seed))
    paths = {"coco_images": os.path.join(coco, "images"), "vg_images": os.path.join(vg, "images"),
             "gqa_images": os.path.join(root, "gqa", "images")}
    paths["coco_train"] = _json(os.path.join(coco, "annotations", "coco_karpathy_train.json"), [
        {"caption": _caption(next(seed)), "image": coco_name("train2014", i), "image_id": f"coco_{i}"}
        for i in COCO_TRAIN_IDS])
    val_split = [{"image": coco_name("val2014", i), "caption": [_caption(next(seed)) for _ in range(5)]}
                 for i in COCO_VAL_IDS]
    paths["coco_test"] = _json(os.path.join(coco, "annotations", "coco_karpathy_test.json"), val_split)
    paths["coco_test_gt"] = _json(os.path.join(coco, "annotations", "coco_karpathy_test_gt.json"), {
        "images": [{"id": i} for i in COCO_VAL_IDS],
        "annotations": [{"image_id": i, "caption": c, "id": 10 * i + k}
                        for i, entry in zip(COCO_VAL_IDS, val_split) for k, c in enumerate(entry["caption"])]})
    paths["vg_train"] = _json(os.path.join(vg, "annotations", "vg_caption.json"), [
        {"image": f"VG_100K/{i}.jpg", "caption": _caption(next(seed)), "image_id": i} for i in VG_IDS])
    info = {"description": "tiny copy of the official layout", "version": "2.0"}
    # VQAv2 val: three questions whose answers the scoring test works by hand (see vqa_predictions).
    questions = [{"image_id": COCO_VAL_IDS[k % 3], "question": q, "question_id": COCO_VAL_IDS[k % 3] * 1000 + k}
                 for k, q in enumerate(("What color is the dog?", "How many cats are there?", "Is it on a table?"))]
    vqa = {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}}
    paths["vqav2_val_questions"] = _json(os.path.join(root, "vqav2", "v2_OpenEnded_mscoco_val2014_questions.json"),
                                         {**vqa, "data_subtype": "val2014", "questions": questions})
    paths["vqav2_val_annotations"] = _json(os.path.join(root, "vqav2", "v2_mscoco_val2014_annotations.json"), {
        "info": info, "license": {}, "data_subtype": "val2014", "annotations": [
            {"question_id": q["question_id"], "image_id": q["image_id"], "question_type": "what",
             "answer_type": "other", "multiple_choice_answer": answer, "answers": _answers(answer, humans)}
            for q, (answer, humans) in zip(questions, (("red", 3), ("2", 2), ("no", 10)))]})
    paths["vqav2_test_dev_questions"] = _json(
        os.path.join(root, "vqav2", "v2_OpenEnded_mscoco_test-dev2015_questions.json"),
        {**vqa, "data_subtype": "test-dev2015", "questions": [
            {"image_id": i, "question": "What is in the picture?", "question_id": i * 1000 + 7}
            for i in COCO_TEST_IDS]})
    paths["okvqa_questions"] = _json(os.path.join(root, "okvqa", "OpenEnded_mscoco_val2014_questions.json"),
                                     {**vqa, "data_subtype": "val2014", "questions": questions[:2]})
    paths["okvqa_annotations"] = _json(os.path.join(root, "okvqa", "mscoco_val2014_annotations.json"), {
        "info": info, "license": {}, "data_subtype": "val2014", "annotations": [
            {"question_id": q["question_id"], "image_id": q["image_id"], "question_type": "eight",
             "answer_type": "other", "confidence": 3, "answers": _answers("dogs", 10, "dogs")}
            for q in questions[:2]]})
    paths["gqa_questions"] = _json(os.path.join(root, "gqa", "testdev_balanced_questions.json"), {
        f"20{k}": {"semantic": [], "entailed": [], "equivalent": [f"20{k}"], "question": q, "imageId": image,
                   "isBalanced": True, "groups": {"global": None, "local": "10c-dog_color"}, "answer": answer,
                   "semanticStr": "select: dog ->query: color", "annotations": {"answer": {}, "question": {},
                   "fullAnswer": {}}, "types": {"structural": "query", "semantic": "attr", "detailed": "color"},
                   "fullAnswer": f"The answer is {answer}."}
        for k, (q, image, answer) in enumerate((("What color is the dog?", GQA_IMAGES[0], "red"),
                                                ("Is the cat on the table?", GQA_IMAGES[1], "no")))})
    return paths


def vqa_predictions(paths: dict) -> tuple[list, float]:
    """A VQAv2 val result file in the official format and its accuracy worked by hand: "red" agrees with
    3 of 10 humans (each leave-one-out subset of 9: min(1, matches / 3); 3 subsets keep 2 matches, 7 keep
    3: (3 * 2/3 + 7 * 1) / 10 = 0.9), "two" normalises to "2", which 2 humans gave ((2 * 1/3 + 8 * 2/3) / 10
    = 0.6), "yes" none: (90 + 60 + 0) / 3 = 50.0."""
    with open(paths["vqav2_val_questions"]) as f:
        ids = [q["question_id"] for q in json.load(f)["questions"]]
    return [{"question_id": i, "answer": a} for i, a in zip(ids, ("Red", "two", "yes"))], 50.0


# ------------------------------------------------------------------------------------------------
# Checkpoints as their publishers ship them (docs/reproduce.md's $CKPT tree), tiny and random
# ------------------------------------------------------------------------------------------------
BERT_SPECIAL = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LLM_VOCAB = 416  # rows of the tiny OPT's embedding, above its tokenizer's (as 50272 > 50265 for OPT)


def bert_vocab() -> list[str]:
    """A lower-cased WordPiece vocab.txt's lines: BERT's special tokens, the words the captions and questions
    use, and single characters (whole and as ##suffixes) so that any word tokenizes."""
    import string
    words = sorted(set(WORDS) | {"a", "what", "color", "is", "how", "many", "cats", "there", "it", "in", "picture",
                                 "photo", "of", "dog", "table"})
    chars = list(string.ascii_lowercase + string.digits) + list(".,?!'-:;")
    return BERT_SPECIAL + words + [c for c in chars if c not in words] + [f"##{c}" for c in string.ascii_lowercase]


def _preprocessor(directory, mean, std, size: int, kind: str) -> None:
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": kind, "do_resize": True, "size": {"height": size, "width": size},
                   "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                   "image_mean": list(mean), "image_std": list(std)}, f, indent=2)


def checkpoints(root, texts) -> dict:
    """The $CKPT tree of docs/reproduce.md, each directory laid out as its hub repository: 
    blip2-opt-2.7b (Blip2ForConditionalGeneration, sharded safetensors, the EVA tower the paper reads),
    clip-vit-large-patch14 (CLIPModel, safetensors), vit-mae-huge / vit-mae-large (ViTMAEForPreTraining,
    pytorch_model.bin), bert-base-uncased (BertForMaskedLM, safetensors + vocab.txt) and opt-2.7b (the bare
    OPTModel's keys in a sharded pytorch_model.bin, GPT-2 BPE vocab.json + merges.txt, no tokenizer.json),
    all 32 wide at 32 px. Returns {name: directory}."""
    import transformers as T
    import hf_models
    from xformer_jax.data.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
    root, out = str(root), {}
    vision = hf_models.tiny_vision_kwargs(num_hidden_layers=2)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        blip2 = T.Blip2ForConditionalGeneration(T.Blip2Config(
            vision_config=vision, qformer_config=hf_models.tiny_qformer_kwargs(num_hidden_layers=2,
                                                                               encoder_hidden_size=32),
            text_config=hf_models.opt_config(vocab_size=LLM_VOCAB).to_dict(), num_query_tokens=4))
    out["blip2"] = hf_models.save(hf_models.randomize(blip2, seed=11), os.path.join(root, "blip2-opt-2.7b"),
                                  max_shard_size="100KB")
    _preprocessor(out["blip2"], CLIP_MEAN, CLIP_STD, 32, "BlipImageProcessor")
    clip = T.CLIPModel(T.CLIPConfig(vision_config=vision, text_config=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=99,
        bos_token_id=0, eos_token_id=1, pad_token_id=1), projection_dim=16))
    out["clip"] = hf_models.save(hf_models.randomize(clip, seed=12), os.path.join(root, "clip-vit-large-patch14"))
    _preprocessor(out["clip"], CLIP_MEAN, CLIP_STD, 32, "CLIPImageProcessor")
    mae = hf_models.mae_pretraining(num_hidden_layers=2, mask_ratio=0.75)
    for name, key in (("vit-mae-huge", "mae"), ("vit-mae-large", "mae_large")):
        out[key] = torch_checkpoint(mae, os.path.join(root, name))
        _preprocessor(out[key], IMAGENET_MEAN, IMAGENET_STD, 32, "ViTImageProcessor")
    vocab = bert_vocab()
    bert = hf_models.bert("BertForMaskedLM", vocab_size=len(vocab), num_hidden_layers=2)
    out["bert"] = hf_models.save(bert, os.path.join(root, "bert-base-uncased"))
    with open(os.path.join(out["bert"], "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(out["bert"], "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": 512}, f)
    opt_dir = os.path.join(root, "opt-2.7b")
    out["opt"] = torch_checkpoint(hf_models.opt_causal_lm(vocab_size=LLM_VOCAB), opt_dir, bare_base_model=True,
                                  shards=2)
    opt_tokenizer(opt_dir, texts, vocab_size=LLM_VOCAB - 16)
    with open(os.path.join(opt_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}, f)
    return out
