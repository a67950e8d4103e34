"""Finding the width multiplier a checkpoint was trained with from its channel counts."""

# the multipliers the model zoo released, tried first; then every multiple of 1/100 and of 1/1000 up to 2
RELEASED = (1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4)
GRID = tuple(k / 100 for k in range(1, 201)) + tuple(k / 1000 for k in range(1, 2001))


def find_multiplier(depths, channels):
    """The first multiplier ``m`` (released ones first) with ``depths(m) == channels``, or None.

    Args:
        depths: ``depths(m) -> {layer: channels}``, the network's rule.
        channels: ``{layer: channels}`` read from a checkpoint; layers it lacks are not compared.
    """
    for multiplier in RELEASED + GRID:
        predicted = depths(multiplier)
        if all(predicted[layer] == count for layer, count in channels.items() if layer in predicted):
            return multiplier
    return None
