"""What a training run checks before it builds a model, reads a weight or writes a file, so that a wrong
path costs seconds, not the minutes of loading ViT-g and OPT: every data source, image root, checkpoint
directory, params file, tokenizer and the init_from run exists and is what its key says, and no part
that a checkpoint should initialise starts random unless `config.allow_random_init` says so. Each
problem is a ValueError in one line naming the config key that holds the bad value."""
import ml_collections

from xformer_jax import rundir, storage
from xformer_jax.convert import hf, safetensors_io
from xformer_jax.data import config as data_config
from xformer_jax.data.tokenizers import QFormerTokenizer, load_llm_tokenizer
from xformer_jax.factory.sections import WEIGHT_SOURCES
from xformer_jax.models import fusion


class InputError(ValueError):
    """A mistake in the run's inputs found before any model is built or file written (one line, naming the key)."""


# The parts a checkpoint initialises, and what starting them random means.
PART_ROLES = {"vision": "the frozen CLIP / EVA tower", "mae": "the frozen MAE encoder and decoder",
              "qformer": "the Q-Former's BERT", "llm": "the frozen LLM"}


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ValueError naming the first bad key (see the module docstring): the places first, then the
    weights each part will start from, then the tokenizers and the data (the slowest to look at)."""
    storage.check_bucket(workdir, "workdir")
    for part in parts(config):
        _check_sources(config.model[part], part)
    covered = _init_from_parts(config)
    if not config.get("allow_random_init", False):
        for part in parts(config):
            if part not in covered and not _has_weights(config.model[part], part):
                raise ValueError(f"config.model.{part}: no weights ({' / '.join(WEIGHT_SOURCES[part])} empty"
                                 f"{'' if not config.get('init_from') else ', and config.init_from does not hold it'})"
                                 f": {PART_ROLES[part]} would start from random weights. Set "
                                 f"config.model.{part}.{WEIGHT_SOURCES[part][0]}, or --config.allow_random_init=True "
                                 "if that is meant")
    _check_tokenizers(config)
    data_config.validate(config.data)


def parts(config: ml_collections.ConfigDict) -> list[str]:
    """The parts of the model `config` describes that a checkpoint initialises."""
    uses_mae = fusion.FusionConfig(kind=config.model.fusion.kind).uses_mae
    return ["vision", "qformer"] + (["mae"] if uses_mae else []) + (["llm"] if config.stage == "stage2" else [])


def _init_from_parts(config) -> set:
    """The parts the run config.init_from names holds (its config.json says which)."""
    if not config.get("init_from"):
        return set()
    checkpoint = rundir.check_run(config.init_from, "config.init_from")
    return set(parts(rundir.read_config(checkpoint.workdir)))


def _has_weights(section, part: str) -> bool:
    return any(section.get(key) for key in WEIGHT_SOURCES[part])


def _check_sources(section, part: str) -> None:
    """Every weight source set for `part` is there: a save_pretrained directory with its config.json and
    safetensors, a params file; "minilm" (the demo's BERT) is the package's."""
    for key in WEIGHT_SOURCES[part]:
        value = section.get(key) or ""
        where = f"config.model.{part}.{key}={value}"
        if not value or value == "minilm":
            continue
        storage.check_bucket(value, f"config.model.{part}.{key}")
        try:
            if key == "params_file":
                if not storage.isfile(value):
                    raise FileNotFoundError(f"{value} does not exist")
            else:
                hf.read_config(value)
                safetensors_io.checkpoint_files(value)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


def _check_tokenizers(config) -> None:
    """The Q-Former's vocab and, at stage 2, the LLM's tokenizer load (the keys name where they come from)."""
    data, bert_dir = config.data, config.model.qformer.get("bert_dir") or ""
    key = ("config.model.qformer.bert_dir" if bert_dir and data.vocab_path == storage.join(bert_dir, "vocab.txt")
           else "config.data.vocab_path")
    try:
        QFormerTokenizer(data.vocab_path or None, data.max_len)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{key}={bert_dir if key.endswith('bert_dir') else data.vocab_path or '(default)'}: "
                         f"{e}") from None
    if config.stage == "stage2":
        if not data.llm_tokenizer_path:
            raise ValueError("config.data.llm_tokenizer_path is empty and config.model.llm.hf_dir names no "
                             "directory: stage 2 needs the LLM's tokenizer")
        key = ("config.model.llm.hf_dir" if data.llm_tokenizer_path == config.model.llm.get("hf_dir")
               else "config.data.llm_tokenizer_path")
        try:
            load_llm_tokenizer(data.llm_tokenizer_path)
        except (FileNotFoundError, ValueError, OSError) as e:
            raise ValueError(f"{key}={data.llm_tokenizer_path}: {e}") from None
