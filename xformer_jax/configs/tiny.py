"""The demo config shrunk for tests and quick benchmark runs (--small, --tiny): tiny random towers and
Q-Former, 64 px synthetic scenes."""
import ml_collections

from xformer_jax.configs import demo


def tiny_config(workdir, fusion: str = "xformer", placement: str = "after_qformer") -> ml_collections.ConfigDict:
    config = demo.get_config("stage1")
    config.total_steps = 4
    config.batch_size = 8
    config.log_every = 1
    config.checkpoint_every = 2
    config.model.vision.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               image_size=64, patch_size=16)
    config.model.mae.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                            decoder_intermediate_size=32, image_size=64, patch_size=16)
    config.model.qformer.update(bert_dir="", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=32, encoder_width=32,
                                num_query_tokens=4, embed_dim=16)
    config.model.fusion.update(kind=fusion, placement=placement, query_heads=4, mae_heads=4, intermediate_size=64)
    config.data.update(path=str(workdir / "data"), image_size=64, max_len=12)
    config.data.synthetic.update(num_train=48, num_val=8, num_test=8, image_size=64)
    # One lr for all: this Q-Former is random throughout, so no param is fresher than the others.
    config.optim.update(warmup_steps=1, lr=1e-3, min_lr=1e-4, lr_scales=())
    return config


def tiny_stage2_config(workdir, tokenizer_path: str, fusion: str = "xformer") -> ml_collections.ConfigDict:
    """tiny_config at stage 2, with a tiny random OPT reading `tokenizer_path`'s vocabulary."""
    config = tiny_config(workdir, fusion)
    config.stage = "stage2"
    config.model.llm.update(kind="opt", vocab_size=400, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                            num_attention_heads=4, max_position_embeddings=128, pad_token_id=1, bos_token_id=2,
                            eos_token_id=2)
    config.data.update(llm_tokenizer_path=tokenizer_path, max_txt_len=16)
    return config
