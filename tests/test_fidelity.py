"""Shape fit, the fidelity measure without the judge's thresholds: exact on clean renders, lower
for soft, in-between and merged shapes."""
import numpy as np

from tiny_rlhf_t2i.fidelity import shape_fit, shape_fit_summary
from tiny_rlhf_t2i.judge import analyze
from tiny_rlhf_t2i.scenes import Scene, render, sample_scene
from tiny_rlhf_t2i.world import COLORS, all_prompts


def test_every_object_of_a_clean_render_fits_exactly():
    specs = all_prompts()
    for res in (16, 32):
        images = np.stack([render(sample_scene(specs[i % len(specs)], np.random.default_rng(i)),
                                  res) for i in range(200)])
        s = shape_fit_summary([analyze(im) for im in images])
        assert s["exact"] == 1.0 and s["mean"] == 1.0 and s["blobs"] > 200


def test_in_between_soft_and_merged_shapes_fit_less():
    circle = render(Scene("circle", "red", "gray", ((0.5, 0.5, 0.3),)), 32)
    diamond = render(Scene("diamond", "red", "gray", ((0.5, 0.5, 0.3),)), 32)
    red = np.array(COLORS["red"], np.uint8)
    # half circle, half diamond: the left half of one and the right half of the other
    between = np.concatenate([circle[:, :16], diamond[:, 16:]], 1)
    assert shape_fit(analyze(circle)) == [1.0] and shape_fit(analyze(diamond)) == [1.0]
    assert 0.7 < shape_fit(analyze(between))[0] < 1.0
    # a soft edge: the shape's rim drawn in the object color, one pixel wider
    soft = circle.copy()
    ring = np.zeros(circle.shape[:2], bool)
    inside = (circle == red).all(-1)
    ring[1:-1, 1:-1] = ~inside[1:-1, 1:-1] & (inside[:-2, 1:-1] | inside[2:, 1:-1]
                                               | inside[1:-1, :-2] | inside[1:-1, 2:])
    soft[ring & (np.arange(32)[None, :] % 2 == 0)] = red  # a ragged rim
    assert shape_fit(analyze(soft))[0] < 1.0
    # two squares touching: one blob, far from any single clean shape
    merged = render(Scene("square", "red", "gray", ((0.3, 0.5, 0.2), (0.57, 0.5, 0.2))), 32)
    assert len(shape_fit(analyze(merged))) == 1 and shape_fit(analyze(merged))[0] < 0.7
