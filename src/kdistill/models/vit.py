"""A small Vision Transformer for 28x28 and 32x32 inputs, with DeiT's optional distillation token: ``vit``.

Dosovitskiy et al., "An Image is Worth 16x16 Words" (arXiv:2010.11929), with the distillation token of Touvron et al.,
"Training data-efficient image transformers & distillation through attention" (DeiT, arXiv:2012.12877; layout as
facebookresearch/deit ``models.py`` ``DistilledVisionTransformer``):

patch embedding (a ``patch_size`` x ``patch_size`` conv of stride ``patch_size``) -> [class token, (distillation
token), patch tokens] + learned position embeddings -> ``depth`` pre-norm encoder blocks
(``nn.TransformerEncoderLayer``: ``norm_first=True``, GELU, no dropout, LayerNorm eps 1e-6 as DeiT; sequence-first, see
:func:`encoder_block`) -> final LayerNorm -> a linear head on the class token (and, with ``distillation_token``, a
second linear head on the distillation token). Initialisation as timm / DeiT: tokens, position embeddings and every
linear layer truncated normal (std 0.02, biases 0); the attention's input projection keeps PyTorch's Xavier
initialisation.

Heads: with a distillation token, ``forward`` (and ``Features.logits``) is the average of the two heads' logits, in
training and in eval mode alike (DeiT's inference rule: the deployed prediction), and ``forward_heads(x)`` gives
``(class_logits, distillation_logits)`` separately, for the ``deit`` method's losses.

Taps: ``stages`` = the patch tokens after each block reshaped to maps (B, width, H / p, W / p), the last one after the
final LayerNorm (what the heads read, as the timm adapter's final stage); ``embedding`` = the class token after the
final LayerNorm (the class head's input); ``logits``. Maps rather than token sequences because the feature methods
(FitNet, AT, SP, VID, SimKD's projector, ...) need (C, H, W) stages (``require_maps``) and pool maps to align them;
the class and distillation tokens are left out of the maps (they have no place on the grid). Hence
``classifier_head()`` raises NotImplementedError: the heads read the class token, which ``stages[-1]`` does not hold,
so no module maps ``stages[-1]`` to the logits (SimKD / CMI / SRRL cannot reuse a ViT *teacher's* classifier; a ViT
student works with them, and as a teacher with every method that reads logits or maps).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.models.registry import register_model
from kdistill.models.taps import Features, TappedModel

LAYER_NORM_EPS = 1e-6  # DeiT's / timm's partial(nn.LayerNorm, eps=1e-6)
INIT_STD = 0.02  # DeiT's trunc_normal_(std=.02)
SHOWN_DIVISORS = 12  # the most divisors an error message lists
MAX_DEPTH = 64  # more blocks than any published ViT (ViT-G/14 has 48)
SEARCHED_DIVISORS = 1024  # an error message looks for divisors up to this (a fuzzed width may be 2**70)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def patch_size_problem(patch_size: Any) -> str | None:
    """What a patch size should have been (None when it fits): an integer >= 1 (that it divides the image side is
    checked when the model is built, where the input size is known)."""
    fits = _is_integer(patch_size) and patch_size >= 1
    return None if fits else "an integer >= 1 that divides the image sides (28x28: 1, 2, 4, 7, 14, 28; 32x32: 1 to 32)"


def depth_problem(depth: Any) -> str | None:
    """What a depth should have been (None when it fits): an integer from 1 to :data:`MAX_DEPTH`."""
    fits = _is_integer(depth) and 1 <= depth <= MAX_DEPTH
    return None if fits else f"an integer from 1 to {MAX_DEPTH} (the number of transformer blocks)"


def heads_problem(heads: Any) -> str | None:
    """What a number of attention heads should have been (None when it fits): an integer >= 1."""
    fits = _is_integer(heads) and heads >= 1
    return None if fits else "an integer >= 1 that divides width (the number of attention heads)"


def width_problem(width: Any) -> str | None:
    """What an embedding width should have been (None when it fits): an integer >= 1 (that ``heads`` divides it is
    checked when the model is built)."""
    fits = _is_integer(width) and width >= 1
    return None if fits else "an integer >= 1 that heads divides (the token embedding dimension)"


def mlp_ratio_problem(mlp_ratio: Any) -> str | None:
    """What an MLP ratio should have been (None when it fits): a finite number > 0."""
    number = isinstance(mlp_ratio, (int, float)) and not isinstance(mlp_ratio, bool)
    fits = number and math.isfinite(mlp_ratio) and mlp_ratio > 0
    return None if fits else "a finite number > 0 (each block's MLP has round(width * mlp_ratio) hidden units)"


def _divisors(number: int) -> str:
    """The smallest divisors of ``number`` (at most :data:`SHOWN_DIVISORS`, none above :data:`SEARCHED_DIVISORS`),
    comma separated, with "..." when there are more."""
    found = [d for d in range(1, min(number, SEARCHED_DIVISORS) + 1) if number % d == 0]
    more = len(found) > SHOWN_DIVISORS or number > SEARCHED_DIVISORS
    return ", ".join(map(str, found[:SHOWN_DIVISORS])) + (", ..." if more else "")


def layout_problem(input_shape: tuple[int, int, int], patch_size: int, width: int, heads: int, hidden: int) -> str:
    """What the options cannot build for this input ("" when they fit): the checks across options and the input."""
    _, height, image_width = input_shape
    if height % patch_size or image_width % patch_size:
        common = math.gcd(height, image_width)
        return (
            f"vit: patch_size={patch_size} must divide the image sides {height}x{image_width}; "
            f"patch sizes that fit: {_divisors(common)}"
        )
    if width % heads:
        return (
            f"vit: width={width} must be divisible by heads={heads} (each head attends in width / heads channels); "
            f"heads that fit width {width}: {_divisors(width)}"
        )
    if hidden < 1:
        return f"vit: mlp_ratio gives each block's MLP {hidden} hidden units at width {width}; raise mlp_ratio or width"
    return ""


def encoder_block(width: int, heads: int, hidden: int) -> nn.TransformerEncoderLayer:
    """One pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x)) with GELU; no dropout (as DeiT-Tiny).

    Sequence-first (``batch_first=False``, inputs (T, B, D)) on purpose: batch-first layers switch, in eval mode without
    gradient and with an even number of heads, to PyTorch's fused inference kernels (``_transformer_encoder_layer_fwd``,
    ``_native_multi_head_attention``), which ``FlopCounterMode`` does not count (``kdistill compare`` reported 5
    KFLOPs for a two-block ViT) and which are not what the ONNX export runs. Sequence-first layers always take the
    composite path, so training, evaluation, FLOP counts and exports compute the same operations."""
    return nn.TransformerEncoderLayer(
        d_model=width,
        nhead=heads,
        dim_feedforward=hidden,
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=LAYER_NORM_EPS,
        batch_first=False,
        norm_first=True,
    )


class VisionTransformer(TappedModel):
    """See the module docstring. ``has_distillation_token`` says whether ``forward_heads`` gives two heads."""

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        patch_size: int,
        depth: int,
        width: int,
        heads: int,
        mlp_ratio: float,
        distillation_token: bool,
    ) -> None:
        super().__init__()
        channels, height, image_width = input_shape
        hidden = round(width * mlp_ratio)
        problem = layout_problem(input_shape, patch_size, width, heads, hidden)
        if problem:
            raise ValueError(problem)
        self.grid = (height // patch_size, image_width // patch_size)  # (H / p, W / p)
        self.prefix_tokens = 2 if distillation_token else 1
        self.patch_embedding = nn.Conv2d(channels, width, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, width)) if distillation_token else None
        num_tokens = self.prefix_tokens + self.grid[0] * self.grid[1]
        self.position_embedding = nn.Parameter(torch.zeros(1, num_tokens, width))
        self.blocks = nn.ModuleList(encoder_block(width, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(width, num_classes)
        self.head_distillation = nn.Linear(width, num_classes) if distillation_token else None
        self._initialise()

    def _initialise(self) -> None:
        tokens = [self.class_token, self.position_embedding]
        for parameter in tokens + ([self.distillation_token] if self.distillation_token is not None else []):
            nn.init.trunc_normal_(parameter, std=INIT_STD)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def has_distillation_token(self) -> bool:
        return self.distillation_token is not None

    def encode(self, x: Tensor, maps: list[Tensor] | None = None) -> Tensor:
        """(B, C, H, W) -> the token sequence (B, P + N, D) after the final LayerNorm (P = 1 or 2 prefix tokens,
        N = H / p * W / p patches); with ``maps``, each block's patch tokens are appended to it as (B, D, H/p, W/p)."""
        patches = self.patch_embedding(x)  # (B, D, H/p, W/p)
        batch = patches.shape[0]
        prefix = [self.class_token.expand(batch, -1, -1)]  # (B, 1, D)
        if self.distillation_token is not None:
            prefix.append(self.distillation_token.expand(batch, -1, -1))  # (B, 1, D)
        tokens = torch.cat([*prefix, patches.flatten(2).transpose(1, 2)], dim=1)  # (B, P + N, D)
        sequence = (tokens + self.position_embedding).transpose(0, 1)  # (P + N, B, D): the blocks are sequence-first
        for block in self.blocks:
            sequence = block(sequence)  # (P + N, B, D)
            if maps is not None:
                maps.append(self.patch_map(sequence.transpose(0, 1)))
        return self.norm(sequence.transpose(0, 1))  # (B, P + N, D)

    def patch_map(self, tokens: Tensor) -> Tensor:
        """(B, P + N, D) tokens -> the patch tokens as a map (B, D, H/p, W/p)."""
        patches = tokens[:, self.prefix_tokens :].transpose(1, 2)  # (B, D, N)
        return patches.reshape(patches.shape[0], patches.shape[1], *self.grid)

    def _heads(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, P + N, D) normalised tokens -> (class logits (B, K), distillation logits (B, K) or None)."""
        class_logits = self.head(tokens[:, 0])  # (B, K)
        if self.head_distillation is None:
            return class_logits, None
        return class_logits, self.head_distillation(tokens[:, 1])  # (B, K)

    def _logits(self, tokens: Tensor) -> Tensor:
        class_logits, distillation_logits = self._heads(tokens)
        return class_logits if distillation_logits is None else (class_logits + distillation_logits) / 2

    def forward_heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(class head logits, distillation head logits), each (B, K): what DeiT's losses read in training."""
        class_logits, distillation_logits = self._heads(self.encode(x))
        if distillation_logits is None:
            raise RuntimeError("this vit has no distillation token: build it with kwargs distillation_token=true")
        return class_logits, distillation_logits

    def forward_features(self, x: Tensor) -> Features:
        maps: list[Tensor] = []
        tokens = self.encode(x, maps)  # (B, P + N, D)
        maps[-1] = self.patch_map(tokens)  # the last block's patches after the final norm
        return Features(stages=maps, embedding=tokens[:, 0], logits=self._logits(tokens))

    def forward(self, x: Tensor) -> Tensor:
        return self._logits(self.encode(x))  # (B, K): with a distillation token, the mean of the two heads

    def classifier_head(self) -> nn.Module:
        raise NotImplementedError(
            "vit: the heads read the class (and distillation) token, which stages[-1] (the patch map) does not hold; "
            "no classifier head maps stages[-1] to the logits"
        )


@register_model(
    "vit",
    family="vit",
    source="ViT (arXiv:2010.11929) with DeiT's distillation token (arXiv:2012.12877, facebookresearch/deit models.py)",
    checks={
        "patch_size": patch_size_problem,
        "depth": depth_problem,
        "width": width_problem,
        "heads": heads_problem,
        "mlp_ratio": mlp_ratio_problem,
    },
)
def vit(
    num_classes: int,
    input_shape: tuple[int, int, int],
    patch_size: int = 4,
    depth: int = 6,
    width: int = 192,
    heads: int = 3,
    mlp_ratio: float = 2.0,
    distillation_token: bool = False,
) -> VisionTransformer:
    """A small ViT: ``patch_size`` must divide the image sides (4 gives 7x7 patches on 28x28, 8x8 on 32x32), ``heads``
    must divide ``width`` (DeiT-Tiny's width 192 and 3 heads by default, at half its depth and MLP ratio);
    ``distillation_token`` adds DeiT's second token and head (``forward`` averages the two heads)."""
    return VisionTransformer(num_classes, input_shape, patch_size, depth, width, heads, mlp_ratio, distillation_token)
