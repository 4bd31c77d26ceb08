"""Transformer models built from their published hyper-parameters (DESIGN.md §7).

`build_transformer` emits the `cim` graph of a prefill pass — embedding, every decoder
(or encoder) layer, final norm and LM head — without materializing any weight, so
LLaMA2-7B (6.7 GB of weights) or OPT-13B compile like a small ONNX file.  The
operators and shapes follow the Hugging Face implementations that the bundled ONNX
exports come from (a test checks LLaMA's first two layers against
`models/llama2_7b_2layers.onnx`).

Sources of the hyper-parameters (layers, hidden size, heads, FFN size, vocabulary):
bert-base-uncased / bert-large-uncased `config.json` (Devlin et al., 2019);
meta-llama/Llama-2-7b-hf `config.json` (Touvron et al., 2023);
facebook/opt-6.7b and facebook/opt-13b `config.json` (Zhang et al., 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, TensorType, f32, i64
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue

from cmswitch.dialects.cim import DynMatmulOp, MatmulOp, VectorOp, array_prop
from cmswitch.errors import CMSwitchError


@dataclass(frozen=True)
class TransformerConfig:
    """Published hyper-parameters.  style: "bert" (post-norm encoder, GELU FFN),
    "llama" (pre-RMSNorm decoder, rotary embedding, gated SiLU FFN, LM head) or
    "opt" (pre-LayerNorm decoder, ReLU FFN, LM head)."""

    name: str
    style: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int


CONFIGS: dict[str, TransformerConfig] = {
    c.name: c
    for c in (
        TransformerConfig("bert-base", "bert", 12, 768, 12, 3072, 30522),
        TransformerConfig("bert-large", "bert", 24, 1024, 16, 4096, 30522),
        TransformerConfig("llama2-7b", "llama", 32, 4096, 32, 11008, 32000),
        TransformerConfig("opt-6.7b", "opt", 32, 4096, 32, 16384, 50272),
        TransformerConfig("opt-13b", "opt", 40, 5120, 40, 20480, 50272),
    )
}


class _Builder:
    """Appends `cim` ops to a block, naming every value."""

    def __init__(self, batch: int, seq: int):
        self.batch, self.seq = batch, seq
        self.ops: list[Operation] = []

    def t(self, *shape: int) -> TensorType:
        return TensorType(f32, list(shape))

    def add(self, op: Operation, name: str) -> SSAValue:
        self.ops.append(op)
        op.results[0].name_hint = name
        return op.results[0]

    def vec(self, kind: str, inputs: list[SSAValue], shape: tuple[int, ...], name: str,
            **attrs: int | list[int]) -> SSAValue:
        extra: dict[str, Attribute] = {
            k: array_prop(v) if isinstance(v, list) else IntegerAttr(v, i64)
            for k, v in attrs.items()}
        return self.add(VectorOp(kind, inputs, [self.t(*shape)], extra), name)

    def linear(self, x: SSAValue, n: int, weight: str, name: str) -> SSAValue:
        return self.add(MatmulOp(x, self.t(self.batch, self.seq, n), weight), name)


def _attention(b: _Builder, cfg: TransformerConfig, x: SSAValue, p: str) -> SSAValue:
    """Multi-head self-attention: Q, K, V projections, per-head scores Q·Kᵀ, softmax,
    P·V, output projection.  Shapes ``(B, S, H)`` -> ``(B, heads, S, d)``."""
    bs, s, h, nh = b.batch, b.seq, cfg.hidden, cfg.heads
    d = h // nh
    heads = []
    for proj in ("q", "k", "v"):
        y = b.linear(x, h, f"{p}.self_attn.{proj}_proj.weight", f"{p}.{proj}")
        y = b.vec("reshape", [y], (bs, s, nh, d), f"{p}.{proj}.heads")
        y = b.vec("transpose", [y], (bs, nh, s, d), f"{p}.{proj}.t",
                  perm=[0, 2, 1, 3])
        if cfg.style == "llama" and proj in ("q", "k"):  # rotary: x*cos + rotate(x)*sin
            y = b.vec("mul", [y], (bs, nh, s, d), f"{p}.{proj}.rope")
        heads.append(y)
    q, k, v = heads
    kt = b.vec("transpose", [k], (bs, nh, d, s), f"{p}.kT", perm=[0, 1, 3, 2])
    scores = b.add(DynMatmulOp(q, kt, b.t(bs, nh, s, s)), f"{p}.scores")
    probs = b.vec("softmax", [scores], (bs, nh, s, s), f"{p}.probs", axis=-1)
    ctx = b.add(DynMatmulOp(probs, v, b.t(bs, nh, s, d)), f"{p}.context")
    ctx = b.vec("transpose", [ctx], (bs, s, nh, d), f"{p}.context.t", perm=[0, 2, 1, 3])
    ctx = b.vec("reshape", [ctx], (bs, s, h), f"{p}.context.flat")
    return b.linear(ctx, h, f"{p}.self_attn.o_proj.weight", f"{p}.attn_out")


KV_BLOCK = 1024
"""Tokens per block of the KV cache (a paged cache, as vLLM keeps it): each block is
its own tensor, so the scores against one block (``d x 1024`` keys) and the context
from it (``1024 x d`` values) are matmuls whose operand fits a chip's arrays
(`cim-partition` does not split run-time operands)."""


def kv_blocks(kv_len: int) -> list[int]:
    """Token counts of the cache blocks of a `kv_len`-token cache (`KV_BLOCK` each,
    the last one shorter)."""
    return [min(KV_BLOCK, kv_len - start) for start in range(0, kv_len, KV_BLOCK)]


def _decode_attention(b: _Builder, cfg: TransformerConfig, x: SSAValue, p: str,
                      cache: list[tuple[SSAValue, SSAValue]]
                      ) -> tuple[SSAValue, SSAValue, SSAValue]:
    """Self-attention of one decode step: the new token's Q, K, V projections; scores of
    Q against each block of the KV cache (`cache`: per block, keys stored transposed
    ``(B, heads, d, n)`` as the score matmul reads them, and values ``(B, heads, n, d)``)
    and against the new key; softmax over the ``L + 1`` scores; the context from each
    block's values, summed, plus the new value weighted by its probability; output
    projection.  Returns the output and the new key (transposed, ``(B, heads, d, 1)``)
    and value (``(B, heads, 1, d)``) the step appends to the cache.  The cache is read
    in place: no concat of the past and the new key or value (the scores, ``L + 1`` per
    head, are concatenated)."""
    bs, h, nh = b.batch, cfg.hidden, cfg.heads
    d = h // nh
    sizes = [v.type.get_shape()[2] for _, v in cache]
    kv = sum(sizes)
    heads = []
    for proj in ("q", "k", "v"):
        y = b.linear(x, h, f"{p}.self_attn.{proj}_proj.weight", f"{p}.{proj}")
        y = b.vec("reshape", [y], (bs, 1, nh, d), f"{p}.{proj}.heads")
        y = b.vec("transpose", [y], (bs, nh, 1, d), f"{p}.{proj}.t",
                  perm=[0, 2, 1, 3])
        if cfg.style == "llama" and proj in ("q", "k"):
            y = b.vec("mul", [y], (bs, nh, 1, d), f"{p}.{proj}.rope")
        heads.append(y)
    q, k, v = heads
    k_new = b.vec("transpose", [k], (bs, nh, d, 1), f"{p}.kT.new", perm=[0, 1, 3, 2])
    parts = [b.add(DynMatmulOp(q, kt, b.t(bs, nh, 1, n)), f"{p}.scores.past.{j}")
             for j, ((kt, _), n) in enumerate(zip(cache, sizes))]
    parts.append(b.add(DynMatmulOp(q, k_new, b.t(bs, nh, 1, 1)), f"{p}.scores.new"))
    scores = b.vec("concat", parts, (bs, nh, 1, kv + 1), f"{p}.scores", axis=-1)
    probs = b.vec("softmax", [scores], (bs, nh, 1, kv + 1), f"{p}.probs", axis=-1)
    ctx = None
    for j, ((_, past_v), n) in enumerate(zip(cache, sizes)):
        pj = b.vec("slice", [probs], (bs, nh, 1, n), f"{p}.probs.past.{j}")
        cj = b.add(DynMatmulOp(pj, past_v, b.t(bs, nh, 1, d)), f"{p}.context.past.{j}")
        ctx = cj if ctx is None else b.vec("add", [ctx, cj], (bs, nh, 1, d),
                                           f"{p}.context.sum.{j}")
    p_new = b.vec("slice", [probs], (bs, nh, 1, 1), f"{p}.probs.new")
    c_new = b.vec("mul", [p_new, v], (bs, nh, 1, d), f"{p}.context.new")
    ctx = b.vec("add", [ctx, c_new], (bs, nh, 1, d), f"{p}.context")
    ctx = b.vec("transpose", [ctx], (bs, 1, nh, d), f"{p}.context.t", perm=[0, 2, 1, 3])
    ctx = b.vec("reshape", [ctx], (bs, 1, h), f"{p}.context.flat")
    return b.linear(ctx, h, f"{p}.self_attn.o_proj.weight", f"{p}.attn_out"), k_new, v


def _ffn(b: _Builder, cfg: TransformerConfig, x: SSAValue, p: str) -> SSAValue:
    shape = (b.batch, b.seq, cfg.ffn)
    if cfg.style == "llama":
        gate = b.linear(x, cfg.ffn, f"{p}.mlp.gate_proj.weight", f"{p}.gate")
        up = b.linear(x, cfg.ffn, f"{p}.mlp.up_proj.weight", f"{p}.up")
        act = b.vec("silu", [gate], shape, f"{p}.silu")
        hid = b.vec("mul", [act, up], shape, f"{p}.gated")
        return b.linear(hid, cfg.hidden, f"{p}.mlp.down_proj.weight", f"{p}.down")
    up = b.linear(x, cfg.ffn, f"{p}.fc1.weight", f"{p}.fc1")
    act = b.vec("gelu" if cfg.style == "bert" else "relu", [up], shape, f"{p}.act")
    return b.linear(act, cfg.hidden, f"{p}.fc2.weight", f"{p}.fc2")


def _decode_layer(b: _Builder, cfg: TransformerConfig, x: SSAValue, i: int,
                  cache: list[tuple[SSAValue, SSAValue]]) -> tuple[SSAValue, SSAValue, SSAValue]:
    """One pre-norm decoder layer of a decode step; returns its output and the new key
    and value for the cache."""
    p = f"layers.{i}"
    shape = (b.batch, 1, cfg.hidden)
    kind = "rmsnorm" if cfg.style == "llama" else "layernorm"
    h = b.vec(kind, [x], shape, f"{p}.norm1")
    attn, k_new, v_new = _decode_attention(b, cfg, h, p, cache)
    a = b.vec("add", [x, attn], shape, f"{p}.res1")
    h = b.vec(kind, [a], shape, f"{p}.norm2")
    return b.vec("add", [a, _ffn(b, cfg, h, p)], shape, f"{p}.res2"), k_new, v_new


def _layer(b: _Builder, cfg: TransformerConfig, x: SSAValue, i: int) -> SSAValue:
    p = f"layers.{i}"
    shape = (b.batch, b.seq, cfg.hidden)
    if cfg.style == "bert":  # post-norm
        a = b.vec("add", [x, _attention(b, cfg, x, p)], shape, f"{p}.res1")
        a = b.vec("layernorm", [a], shape, f"{p}.norm1")
        f = b.vec("add", [a, _ffn(b, cfg, a, p)], shape, f"{p}.res2")
        return b.vec("layernorm", [f], shape, f"{p}.norm2")
    kind = "rmsnorm" if cfg.style == "llama" else "layernorm"
    h = b.vec(kind, [x], shape, f"{p}.norm1")
    a = b.vec("add", [x, _attention(b, cfg, h, p)], shape, f"{p}.res1")
    h = b.vec(kind, [a], shape, f"{p}.norm2")
    return b.vec("add", [a, _ffn(b, cfg, h, p)], shape, f"{p}.res2")


PHASES = ("prefill", "decode")
"""What `build_transformer` compiles: the prefill pass over the whole prompt, or one
decode step (one new token per sequence against a KV cache)."""

DEFAULT_SEQ = 128
"""The prefill sequence length when none is given."""


def option_problem(name: str, layers: int | None = None, phase: str = "prefill",
                   kv_len: int | None = None, seq: int | None = None) -> str | None:
    """Why `layers`, `phase`, `kv_len` and a given `seq` (None: not given) cannot build
    model `name`, as one line, or None.  The phase options are checked for any model;
    the depth and the decoder-only decode step only for a name of `CONFIGS`.  The one
    check of these options: `build_transformer` raises it, `cmswitch compile` prints
    it as a usage error."""
    if phase not in PHASES:
        return f"{name}: unknown phase '{phase}' (phases: {', '.join(PHASES)})"
    if kv_len is not None and phase != "decode":
        return f"{name}: --kv-len applies to --phase decode"
    if phase == "decode" and kv_len is None:
        return f"{name}: --phase decode needs --kv-len L (the tokens already in the KV cache)"
    if phase == "decode" and kv_len <= 0:
        return f"{name}: --kv-len must be at least 1, got {kv_len}"
    if phase == "decode" and seq is not None:
        return f"{name}: a decode step runs one token per sequence: give --kv-len, not --seq"
    cfg = CONFIGS.get(name)
    if cfg is None:
        return None
    if layers is not None and layers > cfg.layers:
        return f"{name} has {cfg.layers} layers; --layers {layers} asks for more"
    if phase == "decode" and cfg.style == "bert":
        return f"{name} is an encoder: it has no decode phase"
    return None


def build_transformer(name: str, batch: int = 1, seq: int | None = None,
                      layers: int | None = None, phase: str = "prefill",
                      kv_len: int | None = None) -> ModuleOp:
    """The `cim` module of a published model: a prefill pass over ``(batch, seq)`` token
    ids (`seq` default `DEFAULT_SEQ`), or (``phase="decode"``, no `seq`) one decode step
    of ``batch`` sequences whose KV cache holds `kv_len` earlier tokens (decoder styles
    only: llama, opt).

    A decode step's function arguments are the new token ids ``(batch, 1)`` and, per
    layer i and cache block j (`kv_blocks`: `KV_BLOCK` tokens each), the keys
    ``layers.i.past_kT.j`` ``(batch, heads, d, n_j)`` and values ``layers.i.past_v.j``
    ``(batch, heads, n_j, d)``; it returns the logits
    ``(batch, 1, vocab)`` and, per layer, the new key and value to append.
    layers: keep only the first `layers` layers (default: all).  Raises CMSwitchError
    for an unknown name, a non-positive size, or options `option_problem` refuses."""
    cfg = CONFIGS.get(name)
    if cfg is None:
        raise CMSwitchError(f"unknown model '{name}': not a file nor a published "
                            f"configuration ({', '.join(CONFIGS)})")
    problem = option_problem(name, layers, phase, kv_len, seq)
    if problem:
        raise CMSwitchError(problem)
    count = cfg.layers if layers is None else layers
    seq = DEFAULT_SEQ if seq is None else seq
    if min(batch, seq, count) <= 0:
        raise CMSwitchError(f"{name}: batch, seq and layers must be positive")
    if phase == "prefill":
        return _prefill(cfg, batch, seq, count)
    return _decode(cfg, batch, count, kv_len)


def _finish(b: _Builder, block: Block, outputs: list[SSAValue], name: str) -> ModuleOp:
    block.add_ops(b.ops)
    block.add_op(func.ReturnOp(*outputs))
    main = func.FuncOp("main", ([a.type for a in block.args], [x.type for x in outputs]),
                       Region(block))
    module = ModuleOp([main])
    module.attributes["cim.model"] = StringAttr(name)
    return module


def _prefill(cfg: TransformerConfig, batch: int, seq: int, count: int) -> ModuleOp:
    b = _Builder(batch, seq)
    block = Block(arg_types=[TensorType(i64, [batch, seq])])
    block.args[0].name_hint = "input_ids"
    x = b.vec("gather", [block.args[0]], (batch, seq, cfg.hidden), "embed", table=cfg.vocab)
    for i in range(count):
        x = _layer(b, cfg, x, i)
    if cfg.style != "bert":
        x = b.vec("layernorm" if cfg.style == "opt" else "rmsnorm", [x],
                  (batch, seq, cfg.hidden), "final_norm")
        x = b.linear(x, cfg.vocab, "lm_head.weight", "logits")
    return _finish(b, block, [x], cfg.name)


def _decode(cfg: TransformerConfig, batch: int, count: int, kv_len: int) -> ModuleOp:
    b = _Builder(batch, 1)
    nh, d = cfg.heads, cfg.hidden // cfg.heads
    sizes = kv_blocks(kv_len)
    types = [TensorType(i64, [batch, 1])]
    names = ["input_ids"]
    for i in range(count):
        for j, n in enumerate(sizes):
            types += [TensorType(f32, [batch, nh, d, n]), TensorType(f32, [batch, nh, n, d])]
            names += [f"layers.{i}.past_kT.{j}", f"layers.{i}.past_v.{j}"]
    block = Block(arg_types=types)
    for arg, name in zip(block.args, names):
        arg.name_hint = name
    x = b.vec("gather", [block.args[0]], (batch, 1, cfg.hidden), "embed", table=cfg.vocab)
    cache_out = []
    per_layer = 2 * len(sizes)
    for i in range(count):
        args = block.args[1 + i * per_layer: 1 + (i + 1) * per_layer]
        cache = [(args[2 * j], args[2 * j + 1]) for j in range(len(sizes))]
        x, k_new, v_new = _decode_layer(b, cfg, x, i, cache)
        cache_out += [k_new, v_new]
    x = b.vec("layernorm" if cfg.style == "opt" else "rmsnorm", [x], (batch, 1, cfg.hidden),
              "final_norm")
    x = b.linear(x, cfg.vocab, "lm_head.weight", "logits")
    return _finish(b, block, [x, *cache_out], f"{cfg.name}.decode")
