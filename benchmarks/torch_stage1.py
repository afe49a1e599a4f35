"""A PyTorch X-Former stage-1 model assembled from transformers' modules: the reference for stage1_step.py.

The same work as `xformer_jax.models.xformer.Stage1Model` (xformer fusion, after_qformer placement) at
the same shapes, not the same numbers (weights are random and independent):
  * frozen `CLIPVisionModel`, run under no_grad up to hidden_states[feature_layer] only (the encoder's
    layer list is cut after the feature layer, as our `VisionTransformer.features` stops there);
  * frozen `ViTMAEForPreTraining`: the encoder masks with `noise` (mask_ratio = fusion.mask_ratio) under
    no_grad; its decoder reads M' with gradients flowing to M' (its params stay frozen);
  * the Q-Former: `Blip2QFormerModel` (use_qformer_text_input=True) + `Blip2TextEmbeddings` + query tokens,
    `ln_vision`, vision_proj / text_proj / itm_head / temp, and BERT's `BertLMPredictionHead` with the
    decoder tied to the word embeddings;
  * the dual cross-attention block (M' <- Z, then Z' <- M') from `Blip2QFormerAttention` (cross),
    `Blip2QFormerIntermediate` and `Blip2QFormerOutput` at the two widths (post-LN, BERT style), applied
    after the image pass and after the ITM pass, as our model does;
  * the passes: image (queries), text (ITC), ITM joint pass over the 3B batch, ITG text pass, decoder.
    ITG, `itg="cache"` (default): LAVIS's past_key_values, the text-only pass attends to the query keys /
    values of the image pass (captured with forward hooks), i.e. exactly our computation;
    `itg="joint"`: one [queries; text] pass with the UniLM mask (more work: recomputes the query rows);
  * losses: ITC (max over queries / temp, label smoothing 0.1), ITM (hard negatives with torch.multinomial
    from softmax(sim) with the diagonal masked, 3B layout, itm_head mean over queries, CE), ITG (shifted
    CE, smoothing 0.1, pads ignored), reconstruction (MSE per patch on masked patches).
  * `make_optimizer`: AdamW (no decay for 1-D params), lr / betas / eps / decay from `config.optim`.
Dropout is 0 everywhere (our model has none).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers as T
from torch import nn
from transformers.models.bert.modeling_bert import BertLMPredictionHead
from transformers.models.blip_2.modeling_blip_2 import (Blip2QFormerAttention, Blip2QFormerIntermediate,
                                                        Blip2QFormerOutput, Blip2TextEmbeddings)

ATTN = "sdpa"
TEMP_RANGE = (0.001, 0.5)


def _qformer_config(q, **overrides) -> T.Blip2QFormerConfig:
    fields = dict(vocab_size=q.vocab_size, hidden_size=q.hidden_size, num_hidden_layers=q.num_hidden_layers,
                  num_attention_heads=q.num_attention_heads, intermediate_size=q.intermediate_size,
                  hidden_act=q.hidden_act, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  max_position_embeddings=q.max_position_embeddings, layer_norm_eps=q.layer_norm_eps,
                  pad_token_id=q.pad_token_id, cross_attention_frequency=q.cross_attention_freq,
                  encoder_hidden_size=q.encoder_width, use_qformer_text_input=True)
    fields.update(overrides)
    config = T.Blip2QFormerConfig(**fields)
    config._attn_implementation = ATTN
    return config


@torch.no_grad()
def _bert_init(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.normal_(0.0, 0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()


class CrossBlock(nn.Module):
    """x attends to memory (another width), then an FFN; both post-LN (our fusion.CrossBlock)."""

    def __init__(self, width, memory_width, heads, intermediate, act, eps):
        super().__init__()
        config = T.Blip2QFormerConfig(hidden_size=width, encoder_hidden_size=memory_width, num_attention_heads=heads,
                                      intermediate_size=intermediate, hidden_act=act, layer_norm_eps=eps,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        config._attn_implementation = ATTN
        self.crossattention = Blip2QFormerAttention(config, is_cross_attention=True)
        self.intermediate = Blip2QFormerIntermediate(config)
        self.output = Blip2QFormerOutput(config)

    def forward(self, x, memory):
        x = self.crossattention(x, encoder_hidden_states=memory)
        return self.output(self.intermediate(x), x)


class DualCrossAttention(nn.Module):
    def __init__(self, fusion, query_width, mae_width):
        super().__init__()
        args = (fusion.intermediate_size, fusion.hidden_act, fusion.layer_norm_eps)
        self.mae_block = CrossBlock(mae_width, query_width, fusion.mae_heads, *args)
        self.query_block = CrossBlock(query_width, mae_width, fusion.query_heads, *args)

    def forward(self, queries, mae_states):
        mae_states = self.mae_block(mae_states, queries)
        return self.query_block(queries, mae_states), mae_states


class TorchStage1(nn.Module):
    """X-Former stage 1; `config` is our `Stage1Config` (only its sizes are read)."""

    def __init__(self, config, itg: str = "cache"):
        super().__init__()
        if config.fusion.kind != "xformer" or config.fusion.placement != "after_qformer":
            raise ValueError("the torch reference implements fusion.kind='xformer', placement='after_qformer' only")
        if itg not in ("cache", "joint"):
            raise ValueError(f"itg must be 'cache' or 'joint', got {itg!r}")
        v, m, q, f = config.vision, config.mae, config.qformer, config.fusion
        self.itg_mode = itg
        self.itc_smoothing, self.itg_smoothing = config.itc_label_smoothing, config.itg_label_smoothing
        self.dec_token_id, self.pad_token_id = q.dec_token_id, q.pad_token_id
        self.num_queries = q.num_query_tokens
        if v.kind != "clip":
            raise ValueError("the torch reference builds a CLIP vision tower (vision.kind='clip')")
        clip_config = T.CLIPVisionConfig(hidden_size=v.hidden_size, num_hidden_layers=v.num_hidden_layers,
                                         num_attention_heads=v.num_attention_heads,
                                         intermediate_size=v.intermediate_size, image_size=v.image_size,
                                         patch_size=v.patch_size, num_channels=v.num_channels,
                                         hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps,
                                         attn_implementation=ATTN)
        self.clip = T.CLIPVisionModel(clip_config)
        # hidden_states[feature_layer] is the output of the first `feature_depth` blocks: run only those.
        encoder = getattr(self.clip, "vision_model", self.clip).encoder  # transformers v5 flattened it
        encoder.layers = nn.ModuleList(list(encoder.layers)[:v.feature_depth])
        mae_config = T.ViTMAEConfig(hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                                    num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
                                    decoder_hidden_size=m.decoder_hidden_size,
                                    decoder_num_hidden_layers=m.decoder_num_hidden_layers,
                                    decoder_num_attention_heads=m.decoder_num_attention_heads,
                                    decoder_intermediate_size=m.decoder_intermediate_size, image_size=m.image_size,
                                    patch_size=m.patch_size, num_channels=m.num_channels,
                                    layer_norm_eps=m.layer_norm_eps, hidden_act=m.hidden_act,
                                    mask_ratio=f.mask_ratio, norm_pix_loss=m.norm_pix_loss,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                    attn_implementation=ATTN)
        self.mae = T.ViTMAEForPreTraining(mae_config)
        for tower in (self.clip, self.mae):
            tower.requires_grad_(False)
            tower.eval()

        qconfig = _qformer_config(q)
        self.query_tokens = nn.Parameter(torch.randn(1, q.num_query_tokens, q.hidden_size) * 0.02)
        self.embeddings = Blip2TextEmbeddings(qconfig)
        self.qformer = T.Blip2QFormerModel(qconfig)
        self.ln_vision = nn.LayerNorm(v.hidden_size, eps=q.vision_layer_norm_eps)
        self.vision_proj = nn.Linear(q.hidden_size, q.embed_dim)
        self.text_proj = nn.Linear(q.hidden_size, q.embed_dim)
        self.itm_head = nn.Linear(q.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(0.07))
        bert = T.BertConfig(vocab_size=q.vocab_size, hidden_size=q.hidden_size, hidden_act=q.hidden_act,
                            layer_norm_eps=q.layer_norm_eps)
        self.lm_head = BertLMPredictionHead(bert)
        self.lm_head.decoder.weight = self.embeddings.word_embeddings.weight  # tied, as BertLMHeadModel
        self.lm_head.bias = self.lm_head.decoder.bias  # one output bias (HF ties these two as well)
        self.dual = DualCrossAttention(f, q.hidden_size, m.hidden_size)
        for module in (self.embeddings, self.ln_vision, self.vision_proj, self.text_proj, self.itm_head,
                       self.lm_head, self.dual):
            module.apply(_bert_init)  # BERT's init (std 0.02) for the parts that are not HF PreTrainedModels

        # LAVIS's past_key_values: the image pass's per-layer query keys / values, captured by hooks.
        self._capture = None
        for i, layer in enumerate(self.qformer.encoder.layer):
            for kind in ("key", "value"):
                getattr(layer.attention.attention, kind).register_forward_hook(self._hook(i, kind))

    def _hook(self, layer: int, kind: str):
        def hook(_module, _inputs, output):
            if self._capture is not None:
                self._capture[(layer, kind)] = output
        return hook

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()
        self.mae.eval()
        return self

    # -- passes -------------------------------------------------------------------------------------
    def _queries(self, batch):
        return self.query_tokens.expand(batch, -1, -1)

    def image_pass(self, memory):
        """Queries alone: (Z (B, Q, H), per-layer query (keys, values) (B, Q, H))."""
        self._capture = {}
        try:
            queries = self._queries(memory.shape[0])
            z = self.qformer(query_embeds=queries, encoder_hidden_states=memory).last_hidden_state
            cache = [(self._capture[(i, "key")], self._capture[(i, "value")])
                     for i in range(len(self.qformer.encoder.layer))]
        finally:
            self._capture = None
        return z, cache

    def text_pass(self, input_ids, attention_mask):
        embeds = self.embeddings(input_ids=input_ids)
        return self.qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask).last_hidden_state

    def joint_pass(self, memory, input_ids, attention_mask):
        """ITM: [queries; text], bidirectional over non-pad positions, queries cross-attend."""
        queries = self._queries(input_ids.shape[0])
        embeds = self.embeddings(input_ids=input_ids, query_embeds=queries)
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=attention_mask.dtype), attention_mask], dim=1)
        out = self.qformer(query_embeds=embeds, query_length=queries.shape[1], attention_mask=mask,
                           encoder_hidden_states=memory).last_hidden_state
        return out[:, :queries.shape[1]]

    @staticmethod
    def unilm_mask(attention_mask, num_queries: int):
        """(B, 1, Q+T, Q+T) bool: queries see queries; text j sees all queries and non-pad text k <= j."""
        batch, t = attention_mask.shape
        keys = torch.cat([torch.ones(batch, num_queries, dtype=torch.bool), attention_mask.bool()], dim=1)
        pattern = torch.zeros(num_queries + t, num_queries + t, dtype=torch.bool)
        pattern[:num_queries, :num_queries] = True
        pattern[num_queries:, :num_queries] = True
        pattern[num_queries:, num_queries:] = torch.ones(t, t, dtype=torch.bool).tril()
        return pattern[None, None] & keys[:, None, None, :]

    def itg_hidden_cached(self, decoder_ids, attention_mask, cache):
        """Text-only pass whose self-attention is prefixed with the cached query keys / values."""
        num_queries = cache[0][0].shape[1]
        mask = self.unilm_mask(attention_mask, num_queries)[:, :, num_queries:]
        x = self.qformer.layernorm(self.embeddings(input_ids=decoder_ids))
        batch, length, _ = x.shape
        for layer, (past_k, past_v) in zip(self.qformer.encoder.layer, cache):
            attn = layer.attention.attention
            heads = attn.num_attention_heads

            def split(t):
                return t.view(batch, t.shape[1], heads, -1).transpose(1, 2)
            q = split(attn.query(x))
            k = split(torch.cat([past_k, attn.key(x)], dim=1))
            v = split(torch.cat([past_v, attn.value(x)], dim=1))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
            out = layer.attention.output(out.transpose(1, 2).reshape(batch, length, -1), x)
            x = layer.feed_forward_chunk(out)
        return x

    def itg_hidden_joint(self, memory, decoder_ids, attention_mask):
        queries = self._queries(decoder_ids.shape[0])
        embeds = self.embeddings(input_ids=decoder_ids, query_embeds=queries)
        out = self.qformer(query_embeds=embeds, query_length=queries.shape[1],
                           attention_mask=self.unilm_mask(attention_mask, queries.shape[1]),
                           encoder_hidden_states=memory).last_hidden_state
        return out[:, queries.shape[1]:]

    # -- the stage-1 step ----------------------------------------------------------------------------
    def forward(self, pixel_values, mae_pixel_values, input_ids, attention_mask):
        """{'loss', 'itc', 'itm', 'itg', 'rec'}: the summed loss (weights 1) and its terms."""
        batch = pixel_values.shape[0]
        with torch.no_grad():
            clip = self.clip(pixel_values=pixel_values).last_hidden_state  # hidden_states[feature_layer]
            encoded = self.mae.vit(mae_pixel_values)  # masks with fresh torch.rand noise
            mae_states = encoded.last_hidden_state
        with torch.no_grad():
            self.temp.clamp_(*TEMP_RANGE)  # BLIP's in-place clamp, as the JAX step
        memory = self.ln_vision(clip)
        z, cache = self.image_pass(memory)
        z, mae_out = self.dual(z, mae_states)
        image_feats = F.normalize(self.vision_proj(z), dim=-1)
        text_hidden = self.text_pass(input_ids, attention_mask)
        text_feats = F.normalize(self.text_proj(text_hidden[:, 0]), dim=-1)

        # ITC
        sim_i2t = torch.einsum("iqd,td->itq", image_feats, text_feats).max(dim=-1).values / self.temp
        sim_t2i = sim_i2t.t()
        targets = torch.arange(batch)
        itc = 0.5 * (F.cross_entropy(sim_i2t, targets, label_smoothing=self.itc_smoothing)
                     + F.cross_entropy(sim_t2i, targets, label_smoothing=self.itc_smoothing))

        # ITM: hard negatives, 3B layout text [pos, pos, neg] vs image [pos, neg, pos]
        with torch.no_grad():
            diagonal = torch.eye(batch, dtype=torch.bool)
            weights_t2i = F.softmax(sim_t2i.float(), dim=1).masked_fill(diagonal, 0.0)
            weights_i2t = F.softmax(sim_i2t.float(), dim=1).masked_fill(diagonal, 0.0)
            neg_image = torch.multinomial(weights_t2i, 1).squeeze(1)
            neg_text = torch.multinomial(weights_i2t, 1).squeeze(1)
        rows = torch.arange(batch)
        image_index = torch.cat([rows, neg_image, rows])
        text_index = torch.cat([rows, rows, neg_text])
        itm_queries = self.joint_pass(self.ln_vision(clip[image_index]), input_ids[text_index],
                                      attention_mask[text_index])
        itm_queries, _ = self.dual(itm_queries, mae_states[image_index])
        itm_logits = self.itm_head(itm_queries).mean(dim=1)
        itm_labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)])
        itm = F.cross_entropy(itm_logits, itm_labels)

        # ITG: [DEC] replaces [CLS]; shifted CE with smoothing, pads ignored
        decoder_ids = input_ids.clone()
        decoder_ids[:, 0] = self.dec_token_id
        if self.itg_mode == "cache":
            hidden = self.itg_hidden_cached(decoder_ids, attention_mask, cache)
        else:
            hidden = self.itg_hidden_joint(memory, decoder_ids, attention_mask)
        logits = self.lm_head(hidden)
        labels = decoder_ids.masked_fill((attention_mask == 0) | (decoder_ids == self.pad_token_id), -100)
        itg = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                              ignore_index=-100, label_smoothing=self.itg_smoothing)

        # Reconstruction: the frozen decoder reads M'
        pred = self.mae.decoder(mae_out, encoded.ids_restore).logits
        target = self.mae.patchify(mae_pixel_values)
        if self.mae.config.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        rec = (per_patch * encoded.mask).sum() / encoded.mask.sum()
        return {"loss": itc + itm + itg + rec, "itc": itc, "itm": itm, "itg": itg, "rec": rec}


def trainable_parameters(model: nn.Module) -> list:
    seen, out = set(), []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def make_optimizer(model: nn.Module, optim) -> torch.optim.AdamW:
    """AdamW on the trainable params; LAVIS's decay mask (no decay for 1-D params: biases, norms, temp)."""
    params = trainable_parameters(model)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps)


def train_step(model: TorchStage1, optimizer: torch.optim.Optimizer, batch: dict) -> dict:
    """One eager step: forward, backward, AdamW update. Returns the loss terms as floats."""
    optimizer.zero_grad(set_to_none=True)
    out = model(batch["pixel_values"], batch["mae_pixel_values"], batch["input_ids"], batch["attention_mask"])
    out["loss"].backward()
    optimizer.step()
    return {k: v.item() for k, v in out.items()}
