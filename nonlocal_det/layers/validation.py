"""Construction-argument checks shared by the blocks, with errors that name what was expected."""


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
