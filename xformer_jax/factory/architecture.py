"""The architecture a config builds, completed from what it starts from: a part's sizes from its checkpoint
directory's config.json, the parts config.init_from's run trained from that run's config, the data's image
sides from the towers'. One rule throughout (`_follow`): a key left at its default takes the other value
(logged), a key set to another value is a ValueError naming both, before any model is built."""
import dataclasses
import logging

import ml_collections

from xformer_jax import rundir
from xformer_jax.convert.pretrained import RUN_FIELDS, checkpoint_architectures
from xformer_jax.data import config as data_config
from xformer_jax.factory import sections
from xformer_jax.models import fusion

# Fields a checkpoint decides without naming them in its config.json: the tower's kind (its architecture) and
# the Q-Former's [DEC] id (its BERT vocabulary's size).
DERIVED_FIELDS = {"kind", "dec_token_id"}


def with_checkpoint_sizes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose parts take their architecture (widths, depths, vocabulary, image and patch
    size, the tower's kind, ...: the fields the checkpoint's config.json holds) from their checkpoint
    directories, so that a user does not retype a checkpoint's shape: a key left at its default takes the
    checkpoint's value (logged); a key set to another value is a ValueError naming both."""
    out = config.copy_and_resolve_references()
    defaults = sections.model_defaults()
    for part, ((loaded, source), key) in checkpoint_architectures(out.model, out.stage).items():
        section = out.model[part]
        default = (sections.llm_defaults(section.get("kind", "opt")) if part == "llm" else defaults[part])
        path = out.model[part][key.rsplit(".", 1)[1]]
        for f in dataclasses.fields(loaded):
            if f.name in RUN_FIELDS or f.name not in section or (f.name not in source and f.name not in DERIVED_FIELDS):
                continue
            with out.unlocked():
                _follow(section, f"config.model.{part}", f.name, getattr(loaded, f.name), default.get(f.name),
                        f"{key}={path} has {{}} (its config.json)", f"{path}/config.json")
    q, width = out.model.qformer, out.model.vision.hidden_size
    if q.encoder_width != width and q.encoder_width == defaults.qformer.encoder_width:  # reads the tower's width
        with out.unlocked():
            q.encoder_width = width
    return _with_input_sizes(_with_init_from_architecture(out))


# What a run started from config.init_from must build as that run did (the parts whose params it takes).
INIT_FROM_SECTIONS = ("vision", "mae", "qformer", "fusion")


_NOT_ARCHITECTURE = RUN_FIELDS | {"hf_dir", "params_file", "bert_dir", "cross_attention_qk_init_std"}


def _with_init_from_architecture(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The parts config.init_from's run trained keep its architecture: a key left at its default takes the
    run's value (logged), one set to another value is a ValueError naming both (before any model is built,
    where merging the run's params would otherwise fail after minutes of loading)."""
    if not config.get("init_from"):
        return config
    trained = rundir.read_config(rundir.resolve(config.init_from).workdir).model
    defaults = sections.model_defaults()
    for part in INIT_FROM_SECTIONS:
        if part not in trained or not trained[part]:
            continue
        section = config.model[part]
        for key, value in trained[part].items():
            if key not in _NOT_ARCHITECTURE and key in section:
                _follow(section, f"config.model.{part}", key, value, defaults[part].get(key),
                        f"config.init_from={config.init_from} was trained with {{}}",
                        f"config.init_from={config.init_from}")
    return config


def _follow(section, where: str, key: str, value, default, conflict: str, source: str) -> None:
    """section[key] takes `value` when it is left at `default` (or unset), logged as coming from `source`; a
    key set to another value is a ValueError naming both (`conflict` says where `value` is, "{}" for it)."""
    have = _plain(section[key])
    if have == _plain(value):
        return
    if have is not None and have != _plain(default):
        raise ValueError(f"{where}.{key}={have!r} but {conflict.format(repr(_plain(value)))}: leave the key unset "
                         "or make them agree")
    section[key] = value
    logging.info("%s.%s=%r (from %s)", where, key, value, source)


def _with_input_sizes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config.data's image sides are the towers': a side left at its default (data.image_size 224,
    data.mae_image_size unset) follows the tower's image_size; one set to another value is a ValueError."""
    data, model = config.data, config.model
    default = data_config.default_data_config().image_size
    if data.image_size != model.vision.image_size:
        if data.image_size != default:
            raise ValueError(f"config.data.image_size={data.image_size} but config.model.vision.image_size="
                             f"{model.vision.image_size}: the tower reads images of its own size; leave the data key "
                             "unset or make them agree")
        data.image_size = model.vision.image_size
        logging.info("config.data.image_size=%d (the tower's)", data.image_size)
    if fusion.FusionConfig(kind=model.fusion.kind).uses_mae:
        side = data.mae_image_size or data.image_size
        if side != model.mae.image_size:
            if data.mae_image_size is not None:
                raise ValueError(f"config.data.mae_image_size={data.mae_image_size} but config.model.mae.image_size="
                                 f"{model.mae.image_size}: leave the data key unset or make them agree")
            data.mae_image_size = model.mae.image_size
            logging.info("config.data.mae_image_size=%d (the MAE tower's)", data.mae_image_size)
    return config


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value
