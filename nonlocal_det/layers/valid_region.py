"""
Blocks on padded batches: each image's valid region, and norm statistics over valid positions.

Detectron2 pads every image of a batch at the bottom and right. A block that attends over the
padded map lets an image's output depend on its batch-mates' sizes (its keys include the
zeros), and a norm after W_z would take statistics over the zeros. Given each image's valid
size ``(h, w)`` on the block's grid, the blocks instead compute every image on its own valid
rectangle (images of one valid size as one batch): exactly attention with the padded keys
masked out (softmax over valid keys only, sums divided by the number of valid keys, pooling
within the valid region), at the cost of the valid positions only. The norm after W_z then sees
valid positions only: per image for per-sample norms (GroupNorm, LayerNorm), and over every
image's valid positions together for batch norms (BatchNorm, SyncBatchNorm and their variants).
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ValidGroup", "exporting", "valid_groups", "valid_mask", "norm_over_valid"]


def exporting() -> bool:
    """
    Whether tracing, scripting or ``torch.export`` records a graph whose branches are fixed for
    every later input (valid sizes are then not passed); ``torch.compile`` guards and recompiles.
    """
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting()


# (indices of the images in the batch, valid height, valid width)
ValidGroup = Tuple[Tensor, int, int]


def valid_groups(valid_sizes, x: Tensor, owner: str) -> Optional[List[ValidGroup]]:
    """
    The images of x (B, C, H, W) grouped by ``valid_sizes`` (see ``ResidualBlock2d.forward``), in
    order of first appearance; None when ``valid_sizes`` is None or no image is padded. ``owner``
    names the block in errors.
    """
    if valid_sizes is None:
        return None
    batch, _, height, width = x.shape
    sizes = valid_sizes.tolist() if isinstance(valid_sizes, Tensor) else list(valid_sizes)
    if len(sizes) != batch or any(len(s) != 2 for s in sizes):
        raise ValueError(
            f"{owner}: valid_sizes must hold one (height, width) pair per image of the batch "
            f"({batch}), got {valid_sizes!r}"
        )
    groups = {}
    for index, (h, w) in enumerate(sizes):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w)):
            raise ValueError(
                f"{owner}: valid size ({h!r}, {w!r}) of image {index} is not two ints (rows and "
                "columns of the block's grid)"
            )
        if not (1 <= h <= height and 1 <= w <= width):
            raise ValueError(
                f"{owner}: valid size ({h}, {w}) of image {index} does not fit its "
                f"{height}x{width} grid; each must be between (1, 1) and ({height}, {width})"
            )
        groups.setdefault((int(h), int(w)), []).append(index)
    if list(groups) == [(height, width)]:
        return None
    return [(torch.tensor(indices, device=x.device), h, w) for (h, w), indices in groups.items()]


def valid_mask(groups: List[ValidGroup], x: Tensor) -> Tensor:
    """(B, 1, H, W) bool: True on each image's valid positions, for ``groups`` of ``x``."""
    mask = torch.zeros(x.shape[0], 1, *x.shape[-2:], dtype=torch.bool, device=x.device)
    for index, h, w in groups:
        mask[index, :, :h, :w] = True
    return mask


def norm_over_valid(norm: Optional[nn.Module], pieces: List[Tensor], apply) -> List[Tensor]:
    """
    ``apply(norm, piece)``, i.e. norm(piece), for W_z's outputs on the valid rectangles, (b_k, C,
    h_k, w_k) each, with statistics over valid positions only. A batch norm gets every piece's
    positions at once, packed as one (1, C, 1, L) map: its statistics (and running-statistics
    update) are those of the L valid positions. Any other norm is taken to normalise each image
    on its own (GroupNorm, LayerNorm) and gets each piece as it is.
    """
    if norm is None:
        return pieces
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or len(pieces) == 1:
        return [apply(norm, piece) for piece in pieces]
    channels = pieces[0].shape[1]
    flat = [piece.transpose(0, 1).reshape(channels, -1) for piece in pieces]  # (C, b h w) each
    packed = apply(norm, torch.cat(flat, dim=1)[None, :, None, :])[0, :, 0]  # (C, L)
    out = []
    for piece, values in zip(pieces, packed.split([f.shape[1] for f in flat], dim=1)):
        b, _, h, w = piece.shape
        out.append(values.reshape(channels, b, h, w).transpose(0, 1))
    return out
