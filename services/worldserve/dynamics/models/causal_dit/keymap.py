"""The one key map: the original Wan repository's tensor names <-> diffusers' names.

Original names are those of ``WanModel`` in Wan-Video/Wan2.1 ``wan/modules/model.py`` (and of the
causal forks built on it: Self-Forcing, CausVid, Matrix-Game 2.0); diffusers' are those of
``WanTransformer3DModel`` (diffusers 0.42.1, ``transformer_wan.py``), which our
``CausalWanTransformer`` copies. A leading ``model.diffusion_model.`` (ComfyUI repackaging) is
dropped. ``N`` is a block index; ``{p}`` is ``weight`` or ``bias``.

=====================================  =================================================
original                               diffusers
=====================================  =================================================
patch_embedding.{p}                    patch_embedding.{p}
text_embedding.0.{p}                   condition_embedder.text_embedder.linear_1.{p}
text_embedding.2.{p}                   condition_embedder.text_embedder.linear_2.{p}
time_embedding.0.{p}                   condition_embedder.time_embedder.linear_1.{p}
time_embedding.2.{p}                   condition_embedder.time_embedder.linear_2.{p}
time_projection.1.{p}                  condition_embedder.time_proj.{p}
blocks.N.self_attn.q.{p}               blocks.N.attn1.to_q.{p}          (k, v alike)
blocks.N.self_attn.o.{p}               blocks.N.attn1.to_out.0.{p}
blocks.N.self_attn.norm_q.weight       blocks.N.attn1.norm_q.weight     (norm_k alike)
blocks.N.cross_attn.*                  blocks.N.attn2.*                 (as self_attn)
blocks.N.norm3.{p}                     blocks.N.norm2.{p}   the cross-attention norm (affine)
blocks.N.ffn.0.{p}                     blocks.N.ffn.net.0.proj.{p}
blocks.N.ffn.2.{p}                     blocks.N.ffn.net.2.{p}
blocks.N.modulation                    blocks.N.scale_shift_table
blocks.N.action_model.*                blocks.N.action_model.*          (unchanged)
head.head.{p}                          proj_out.{p}
head.modulation                        scale_shift_table
=====================================  =================================================

The original ``norm1``, ``norm2`` (the FFN norm; diffusers' ``norm3``) and ``head.norm`` have no
parameters. Image-conditioning tensors (``img_emb.*``, ``k_img``, ``v_img``, ``norm_k_img``) have no
entry: image-conditioned models are refused by the config.
"""

from __future__ import annotations

import re

_PREFIX = "model.diffusion_model."

# (original pattern, diffusers pattern): "{n}" is a block index, "{p}" the rest of the name.
_RULES: tuple[tuple[str, str], ...] = (
    ("patch_embedding.{p}", "patch_embedding.{p}"),
    ("text_embedding.0.{p}", "condition_embedder.text_embedder.linear_1.{p}"),
    ("text_embedding.2.{p}", "condition_embedder.text_embedder.linear_2.{p}"),
    ("time_embedding.0.{p}", "condition_embedder.time_embedder.linear_1.{p}"),
    ("time_embedding.2.{p}", "condition_embedder.time_embedder.linear_2.{p}"),
    ("time_projection.1.{p}", "condition_embedder.time_proj.{p}"),
    ("blocks.{n}.self_attn.q.{p}", "blocks.{n}.attn1.to_q.{p}"),
    ("blocks.{n}.self_attn.k.{p}", "blocks.{n}.attn1.to_k.{p}"),
    ("blocks.{n}.self_attn.v.{p}", "blocks.{n}.attn1.to_v.{p}"),
    ("blocks.{n}.self_attn.o.{p}", "blocks.{n}.attn1.to_out.0.{p}"),
    ("blocks.{n}.self_attn.norm_q.{p}", "blocks.{n}.attn1.norm_q.{p}"),
    ("blocks.{n}.self_attn.norm_k.{p}", "blocks.{n}.attn1.norm_k.{p}"),
    ("blocks.{n}.cross_attn.q.{p}", "blocks.{n}.attn2.to_q.{p}"),
    ("blocks.{n}.cross_attn.k.{p}", "blocks.{n}.attn2.to_k.{p}"),
    ("blocks.{n}.cross_attn.v.{p}", "blocks.{n}.attn2.to_v.{p}"),
    ("blocks.{n}.cross_attn.o.{p}", "blocks.{n}.attn2.to_out.0.{p}"),
    ("blocks.{n}.cross_attn.norm_q.{p}", "blocks.{n}.attn2.norm_q.{p}"),
    ("blocks.{n}.cross_attn.norm_k.{p}", "blocks.{n}.attn2.norm_k.{p}"),
    ("blocks.{n}.norm3.{p}", "blocks.{n}.norm2.{p}"),
    ("blocks.{n}.ffn.0.{p}", "blocks.{n}.ffn.net.0.proj.{p}"),
    ("blocks.{n}.ffn.2.{p}", "blocks.{n}.ffn.net.2.{p}"),
    ("blocks.{n}.modulation", "blocks.{n}.scale_shift_table"),
    ("blocks.{n}.action_model.{p}", "blocks.{n}.action_model.{p}"),
    ("head.head.{p}", "proj_out.{p}"),
    ("head.modulation", "scale_shift_table"),
)


def _compile(pattern: str) -> re.Pattern[str]:
    rx = re.escape(pattern).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{p\}", r"(?P<p>.+)")
    return re.compile(f"^{rx}$")


_FORWARD = tuple((_compile(src), dst) for src, dst in _RULES)
_BACKWARD = tuple((_compile(dst), src) for src, dst in _RULES)


def _apply(name: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for rx, template in rules:
        m = rx.match(name)
        if m:
            return template.format(**m.groupdict())
    return None


def lookup_original(name: str) -> str | None:
    """diffusers' name of an original Wan tensor name, None when no rule maps it."""
    if name.startswith(_PREFIX):
        name = name[len(_PREFIX) :]
    return _apply(name, _FORWARD)


def original_to_diffusers(name: str) -> str:
    """diffusers' name of an original Wan tensor name (unchanged when no rule applies)."""
    return lookup_original(name) or name


def diffusers_to_original(name: str) -> str:
    """The original Wan name of a diffusers tensor name (unchanged when no rule applies)."""
    return _apply(name, _BACKWARD) or name


def to_diffusers(state: dict[str, object]) -> dict[str, object]:
    """A whole original-named state dict renamed to diffusers' names (values untouched)."""
    return {original_to_diffusers(k): v for k, v in state.items()}


def to_original(state: dict[str, object]) -> dict[str, object]:
    """A whole diffusers-named state dict renamed to the original names (values untouched)."""
    return {diffusers_to_original(k): v for k, v in state.items()}
