"""Mirror averaging: the box on the slice and its three mirror images, flipped back and averaged."""

import numpy as np
import pytest

from napari_imedsam._sample_data import CT_SAMPLES, load_ct_slice
from napari_imedsam.inference.boxes import box_of_mask
from napari_imedsam.inference.mirror import MIRRORS, flip_box, flip_map, flip_points, flip_roi, mirrored
from napari_imedsam.inference.predictor import Prediction, Predictor
from napari_imedsam.model.registry import load_model


@pytest.mark.parametrize("rows, cols", MIRRORS)
def test_boxes_clicks_and_regions_land_where_the_mirrored_pixels_do(rows, cols):
    image = np.zeros((30, 50))
    image[4, 7] = 1.0  # a marked pixel: x 7, y 4
    flipped = flip_map(image, rows, cols)
    y, x = np.argwhere(flipped == 1.0)[0]
    np.testing.assert_allclose(flip_points(np.array([[7.0, 4.0, 1.0]]), image.shape, rows, cols), [[x, y, 1.0]])
    np.testing.assert_allclose(flip_box([7, 4, 7, 4], image.shape, rows, cols), [x, y, x, y])
    np.testing.assert_allclose(flip_box(flip_box([3, 2, 20, 9], image.shape, rows, cols), image.shape, rows, cols),
                               [3, 2, 20, 9])
    region = np.zeros_like(image, bool)
    region[2:9, 3:21] = True
    r0, r1, c0, c1 = flip_roi((2, 9, 3, 21), image.shape, rows, cols)
    expected = np.zeros_like(image, bool)
    expected[r0:r1, c0:c1] = True
    np.testing.assert_array_equal(flip_map(region, rows, cols), expected)


def test_a_mirror_symmetric_predictor_gives_the_same_maps_as_one_pass():
    image = np.zeros((40, 60))
    image[10:25, 12:40] = 1.0

    def predict_box(image, box, points):  # thresholds the image inside the box: mirror-equivariant
        x0, y0, x1, y1 = np.round(box).astype(int)
        inside = np.zeros(image.shape, np.float32)
        inside[y0:y1 + 1, x0:x1 + 1] = image[y0:y1 + 1, x0:x1 + 1]
        return Prediction(coarse_prob=inside, uncertainty=inside * 0.25, refined_prob=inside,
                          box_xyxy=np.asarray(box), roi=(y0, y1 + 1, x0, x1 + 1), n_coarse_exact=1, n_refined=1)

    box = np.array([10.0, 8.0, 45.0, 30.0])
    single = predict_box(image, box, None)
    averaged = mirrored(predict_box, image, box, None)
    np.testing.assert_array_equal(averaged.refined_prob, single.refined_prob)
    np.testing.assert_array_equal(averaged.uncertainty, single.uncertainty)
    assert averaged.roi == single.roi and averaged.n_coarse_exact == 4
    np.testing.assert_array_equal(averaged.box_xyxy, box)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_predictor_averages_the_four_mirrored_predictions_of_the_bundled_model():
    image, labels, names = load_ct_slice(CT_SAMPLES["ct_abdomen"])
    truth = labels == names.index("spleen_000") + 1
    box = box_of_mask(truth)
    loaded = load_model("demo", device="cpu")
    plain = Predictor(loaded)
    passes = []
    for rows, cols in MIRRORS:
        result = plain.predict(flip_map(image, rows, cols), flip_box(box, image.shape, rows, cols))
        passes.append(flip_map(result.refined_prob, rows, cols))
    averaged = Predictor(loaded, mirror=True).predict(image, box)
    np.testing.assert_allclose(averaged.refined_prob, np.mean(passes, axis=0), atol=1e-6)
    assert averaged.refined_prob.shape == image.shape
    assert not np.array_equal(averaged.refined_prob, passes[0])  # the mirrors differ: averaging does something
