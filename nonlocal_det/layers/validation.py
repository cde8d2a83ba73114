"""Argument checks shared by the blocks, with errors that name what was expected."""
import torch


def require_divisible(value: int, divisor: int, value_name: str, divisor_name: str) -> int:
    """Return ``value // divisor`` after checking both are positive ints and divisor divides."""
    for name, v in ((value_name, value), (divisor_name, divisor)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} ({v!r})")
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    if value % divisor:
        raise ValueError(
            f"{divisor_name}={divisor} must divide {value_name}={value}; choose a "
            f"{divisor_name} that divides {value}"
        )
    return value // divisor


def check_feature_map(x, channels: int, owner: str) -> None:
    """Raise TypeError/ValueError unless x is a (B, channels, H, W) floating tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{owner} expects a 4-D input (B, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{owner} was built for {channels} input channels, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects a floating-point input, got {x.dtype}")
